//! A request body Envoy hands ext_authz (`with_request_body`), as zt pdp turns
//! it into OPA-Envoy's input: parsed by its content type (JSON, forms) within a
//! size bound — never panics, and a body over the bound is never parsed.
#![no_main]

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use libfuzzer_sys::fuzz_target;
use zt_pdp::ext_authz::{MAX_PARSED_BODY, opa_envoy_input};

const TYPES: [&str; 4] = [
    "application/json",
    "application/x-www-form-urlencoded",
    "application/json; charset=utf-8",
    "text/plain",
];

fuzz_target!(|bytes: &[u8]| {
    let Some((selector, body)) = bytes.split_first() else { return };
    let content_type = TYPES[usize::from(*selector) % TYPES.len()];
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/p?q=1".into(),
                    headers: [("content-type".to_owned(), content_type.to_owned())].into(),
                    raw_body: body.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let input = opa_envoy_input(&request);
    if body.len() > MAX_PARSED_BODY {
        assert!(input["parsed_body"].is_null());
    }
});
