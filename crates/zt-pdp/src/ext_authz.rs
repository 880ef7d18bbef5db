//! Envoy's external authorization service (`envoy.service.auth.v3.Authorization/Check`)
//! with OPA-Envoy's input shape, so that an existing Envoy or Istio mesh can use zt
//! as its external authorizer: `input.attributes.request.http.*` (protojson field
//! names), `input.parsed_path`, `input.parsed_query`, `input.parsed_body` (JSON
//! and form bodies Envoy sends with `with_request_body`), `input.truncated_body`.
//! Every decision goes to the PDP's decision log, as `/v1/data`'s do.
//!
//! The rule at the configured path (OPA-Envoy's default `envoy/authz/allow`)
//! answers a boolean, or an object with `allowed`, and optionally `http_status`,
//! `body` and `headers` for the denial. Undefined, anything else, or an
//! evaluation error denies.

use envoy_types::ext_authz::v3::pb::{
    Address, Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer};
use envoy_types::pb::google::rpc;
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use crate::Pdp;

/// OPA-Envoy's default decision path.
pub const DEFAULT_PATH: &str = "envoy/authz/allow";

/// Largest body parsed into `input.parsed_body` (serde_json also bounds its
/// nesting, at 128 levels); a larger one leaves it `null`.
pub const MAX_PARSED_BODY: usize = 1 << 20;

/// gRPC status codes used in answers.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

/// The Check service over a PDP's policies.
pub struct ExtAuthz {
    pdp: Pdp,
    path: Vec<String>,
}

impl ExtAuthz {
    /// Decides with the rule at `path` (`a/b/c`).
    pub fn new(pdp: Pdp, path: &str) -> Self {
        Self {
            pdp,
            path: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let input = opa_envoy_input(&request);
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        let policies = match self.pdp.current() {
            Ok(policies) => policies,
            Err(_) => {
                tracing::warn!("ext_authz: policy store unavailable: denied");
                return Ok(Response::new(answer(None)));
            }
        };
        let id = crate::decision_id();
        let started = std::time::Instant::now();
        let result = policies.query(&path, Some(&input)).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ext_authz: evaluation failed: denied");
            None
        });
        let eval_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let allowed = zt_policy::rego::allows(result.as_ref());
        let query = self.path.join("/");
        let logged = crate::Logged {
            id: &id,
            query: &query,
            input: Some(&input),
            result: result.as_ref(),
            decision: if allowed { "ALLOW" } else { "DENY" },
            eval_ns,
        };
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let source = request
            .attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .map(|s| s.principal.as_str())
            .filter(|p| !p.is_empty());
        let recorded = self.pdp.record_with(&policies, &logged, |record| {
            record.destination = "ext_authz".into();
            record.source_principal = source.map(str::to_owned);
            if let Some(http) = http {
                record.method = Some(http.method.clone());
                record.host = Some(http.host.clone());
                // The path without its query: query strings carry secrets.
                let target = http.path.split(['?', '#']).next().unwrap_or_default();
                record.path = Some(target.to_owned());
            }
        });
        // A decision that could not be logged is refused, as on /v1/data.
        if recorded.is_err() {
            return Ok(Response::new(answer(None)));
        }
        Ok(Response::new(answer(result.as_ref())))
    }
}

/// The CheckResponse of a rule's result: a boolean, or an object with
/// `allowed` and the details of the answer.
fn answer(result: Option<&Value>) -> CheckResponse {
    let allowed = zt_policy::rego::allows(result);
    // A boolean result carries no response details.
    let empty = Value::Null;
    let decision = result.unwrap_or(&empty);
    let headers: Vec<HeaderValueOption> = decision
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| {
            Some(HeaderValueOption {
                header: Some(HeaderValue {
                    key: key.clone(),
                    value: value.as_str()?.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect();
    let http_response = if allowed {
        HttpResponse::OkResponse(OkHttpResponse {
            headers,
            ..Default::default()
        })
    } else {
        let code = decision
            .get("http_status")
            .and_then(Value::as_i64)
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(403);
        HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code }),
            headers,
            body: decision
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        })
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: if allowed { OK } else { PERMISSION_DENIED },
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(http_response),
        ..Default::default()
    }
}

/// OPA-Envoy's input document for a CheckRequest.
pub fn opa_envoy_input(request: &CheckRequest) -> Value {
    let attributes = request.attributes.as_ref();
    let http = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let (parsed_path, parsed_query) =
        zt_policy::rego::parsed_path_and_query(http.map_or("", |h| h.path.as_str()));
    let (parsed_body, truncated_body) = http.map_or((Value::Null, false), parsed_body);
    let http_json = http.map(|h| {
        json!({
            "id": h.id,
            "method": h.method,
            "headers": h.headers,
            "path": h.path,
            "host": h.host,
            "scheme": h.scheme,
            "query": h.query,
            "fragment": h.fragment,
            "size": h.size.to_string(),
            "protocol": h.protocol,
            "body": h.body,
        })
    });
    json!({
        "attributes": {
            "source": attributes.and_then(|a| a.source.as_ref()).map(peer),
            "destination": attributes.and_then(|a| a.destination.as_ref()).map(peer),
            "request": {"http": http_json},
            "contextExtensions": attributes.map(|a| a.context_extensions.clone()).unwrap_or_default(),
        },
        "parsed_path": parsed_path,
        "parsed_query": parsed_query,
        "parsed_body": parsed_body,
        "truncated_body": truncated_body,
        "version": {"encoding": "protojson", "ext_authz": "v3"},
    })
}

/// The request body as OPA-Envoy parses it: a JSON body (`content-type:
/// application/json`) as its value, a form (`application/x-www-form-urlencoded`)
/// as a map of lists; `null` otherwise, and when the body is larger than
/// [`MAX_PARSED_BODY`], does not parse, or was truncated by Envoy (then the
/// second value is true: `content-length` says more than Envoy sent).
fn parsed_body(http: &HttpRequest) -> (Value, bool) {
    let content_type = http
        .headers
        .get("content-type")
        .map(|t| t.to_ascii_lowercase())
        .unwrap_or_default();
    let body: &[u8] = if http.body.is_empty() {
        &http.raw_body
    } else {
        http.body.as_bytes()
    };
    if body.is_empty() {
        return (Value::Null, false);
    }
    let declared = http
        .headers
        .get("content-length")
        .and_then(|l| l.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > body.len() as u64) {
        return (Value::Null, true);
    }
    if body.len() > MAX_PARSED_BODY {
        tracing::debug!(bytes = body.len(), "ext_authz: body too large to parse");
        return (Value::Null, false);
    }
    let parsed = if content_type.contains("application/json") {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    } else if content_type.contains("application/x-www-form-urlencoded") {
        std::str::from_utf8(body)
            .map(|form| json!(zt_policy::rego::parsed_path_and_query(&format!("?{form}")).1))
            .map_err(|e| e.to_string())
    } else {
        return (Value::Null, false);
    };
    match parsed {
        Ok(value) => (value, false),
        Err(e) => {
            tracing::debug!(error = %e, "ext_authz: the body does not parse: parsed_body is null");
            (Value::Null, false)
        }
    }
}

/// A peer in protojson form.
fn peer(peer: &Peer) -> Value {
    let address = peer.address.as_ref().and_then(|a| a.address.as_ref()).map(|a| match a {
        Address::SocketAddress(socket) => json!({"socketAddress": {
            "address": socket.address,
            "portValue": match &socket.port_specifier {
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(port)) => json!(port),
                _ => Value::Null,
            },
        }}),
        Address::Pipe(pipe) => json!({"pipe": {"path": pipe.path}}),
        _ => Value::Null,
    });
    json!({
        "address": address,
        "service": peer.service,
        "labels": peer.labels,
        "principal": peer.principal,
        "certificate": peer.certificate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_are_parsed_as_opa_envoy_does() {
        use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
        use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
            HttpRequest, Request as AttrRequest,
        };
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: "/api/v1/a%20b?x=1&x=2&y=hello+world#frag".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let input = opa_envoy_input(&request);
        assert_eq!(input["parsed_path"], json!(["api", "v1", "a b"]));
        assert_eq!(
            input["parsed_query"],
            json!({"x": ["1", "2"], "y": ["hello world"]})
        );
        assert_eq!(input["attributes"]["request"]["http"]["method"], "GET");
    }

    fn with_body(content_type: &str, body: &str, length: Option<usize>) -> Value {
        use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
        use envoy_types::pb::envoy::service::auth::v3::attribute_context::Request as AttrRequest;
        let mut headers: std::collections::HashMap<String, String> =
            [("content-type".to_owned(), content_type.to_owned())].into();
        if let Some(length) = length {
            headers.insert("content-length".into(), length.to_string());
        }
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        method: "POST".into(),
                        path: "/orders".into(),
                        headers,
                        body: body.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        opa_envoy_input(&request)
    }

    #[test]
    fn json_and_form_bodies_are_parsed_and_bad_ones_left_null() {
        let input = with_body(
            "application/json; charset=utf-8",
            r#"{"amount": 5, "items": ["a"]}"#,
            None,
        );
        assert_eq!(input["parsed_body"], json!({"amount": 5, "items": ["a"]}));
        assert_eq!(input["truncated_body"], false);
        let form = with_body("application/x-www-form-urlencoded", "a=1&a=2&b=x+y", None);
        assert_eq!(form["parsed_body"], json!({"a": ["1", "2"], "b": ["x y"]}));
        // Not JSON after all, another type, or nothing: null, no error.
        assert_eq!(
            with_body("application/json", "{\"amount\": ", None)["parsed_body"],
            Value::Null
        );
        assert_eq!(with_body("text/plain", "{}", None)["parsed_body"], Value::Null);
        assert_eq!(
            with_body("application/json", "", None)["parsed_body"],
            Value::Null
        );
        // Envoy sent less than content-length says: truncated, not parsed.
        let truncated = with_body("application/json", r#"{"a": 1}"#, Some(100));
        assert_eq!(truncated["parsed_body"], Value::Null);
        assert_eq!(truncated["truncated_body"], true);
        // Nested past serde_json's limit, or over the size limit: null.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            with_body("application/json", &deep, None)["parsed_body"],
            Value::Null
        );
        let big = format!("[{}0]", "0,".repeat(MAX_PARSED_BODY / 2));
        assert_eq!(
            with_body("application/json", &big, None)["parsed_body"],
            Value::Null
        );
    }
}
