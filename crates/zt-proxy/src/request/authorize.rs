//! The authorization stage: the policies decide on the head the app will
//! receive ([`super::normalize`] made it), the decision is recorded (decision
//! log, metrics), and a DENY in enforce mode refuses the request.

use std::collections::BTreeMap;

use http::Request;

use super::normalize::Admitted;
use crate::authz::{Authorizer, Decision};
use crate::connection::Peer;
use crate::refusal::Refusal;

/// Decides and records the request; `Ok` with the decision when it may pass.
pub(crate) async fn check<B>(
    authz: &Authorizer,
    request: &Request<B>,
    head: &Admitted,
    peer: &Peer,
    verified: Option<&zt_authn::Verified>,
) -> Result<Decision, Refusal> {
    authz
        .authorize(&policy_request(request, head, peer, verified))
        .await
}

/// The request as policies see it: the head the app gets. The query rides
/// along for CUSTOM providers; policies match the path only.
fn policy_request<B>(
    request: &Request<B>,
    head: &Admitted,
    peer: &Peer,
    verified: Option<&zt_authn::Verified>,
) -> zt_policy::Request {
    let headers = policy_headers(request.headers(), &[]);
    peer.policy_request(Some(zt_policy::request::Http {
        method: request.method().as_str().to_owned(),
        path: head.path_and_query.as_str().to_owned(),
        host: head.host.clone(),
        headers,
        auth: verified.map(zt_authn::Verified::to_auth),
    }))
}

/// Headers as policies see them (`request.headers[NAME]`): lower-case
/// names, the values of a repeated header joined with `,`; those in `except`
/// (credentials a policy has no business reading) left out.
pub fn policy_headers(headers: &http::HeaderMap, except: &[http::HeaderName]) -> BTreeMap<String, String> {
    let mut folded = BTreeMap::new();
    for (name, value) in headers {
        if except.contains(name) {
            continue;
        }
        if let Ok(value) = value.to_str() {
            folded
                .entry(name.as_str().to_owned())
                .and_modify(|v: &mut String| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_owned());
        }
    }
    folded
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::request::normalize::{HeadRules, admit};

    #[test]
    fn policies_see_the_head_the_app_gets() {
        let mut request = Request::builder()
            .uri("/a/./b/../c?x=1")
            .header("host", "API.example.")
            .header("accept", "a")
            .header("accept", "b")
            .header("x_client_cn", "forged")
            .body(())
            .unwrap();
        let head = admit(&mut request, &HeadRules::default()).unwrap();
        let peer = Peer::for_tests(true);
        let seen = policy_request(&request, &head, &peer, None);
        let http = seen.request.unwrap();
        assert_eq!(http.path, "/a/c?x=1");
        assert_eq!(http.host, "api.example");
        assert_eq!(http.headers["accept"], "a,b");
        assert!(!http.headers.contains_key("x_client_cn"));
        assert_eq!(seen.source.principal.as_deref(), Some("spiffe://example.org/one"));
        assert_eq!(seen.destination.port, Some(15006));
    }
}
