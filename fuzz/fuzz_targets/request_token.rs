//! RequestAuthentication of arbitrary requests (a header value and a query)
//! against an inline key: never panics, never verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_authn::request::{Carrier, Outcome, Rule, authenticate};
use zt_authn::Keys;
use zt_policy::request_authentication::{JwksSource, JwtRule, TokenLocation};

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

struct Request<'a> {
    authorization: &'a str,
    query: &'a str,
}

impl Carrier for Request<'_> {
    fn header_values(&self, name: &str) -> Vec<&str> {
        if name == "authorization" { vec![self.authorization] } else { Vec::new() }
    }
    fn query(&self) -> Option<&str> {
        Some(self.query)
    }
}

fuzz_target!(|input: (&str, &str)| {
    let Ok(keys) = Keys::inline(JWKS) else { return };
    let spec = JwtRule {
        issuer: "https://idp.example".into(),
        audiences: vec![],
        jwks: JwksSource::Inline(JWKS.into()),
        locations: TokenLocation::defaults(),
        forward_original_token: false,
        claim_headers: vec![],
        payload_header: None,
    };
    let rules = [Rule::new(spec, keys)];
    let request = Request { authorization: input.0, query: input.1 };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else { return };
    let outcome = runtime.block_on(authenticate(&rules, &request, Some(1_800_000_000)));
    assert!(!matches!(outcome, Outcome::Valid { .. }));
});
