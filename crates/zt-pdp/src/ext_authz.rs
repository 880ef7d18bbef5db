//! Envoy's external authorization service (`envoy.service.auth.v3.Authorization/Check`)
//! with OPA-Envoy's input shape, so that an existing Envoy or Istio mesh can use zt
//! as its external authorizer: `input.attributes.request.http.*` (protojson field
//! names), `input.parsed_path`, `input.parsed_query`.
//!
//! The rule at the configured path (OPA-Envoy's default `envoy/authz/allow`)
//! answers a boolean, or an object with `allowed`, and optionally `http_status`,
//! `body` and `headers` for the denial. Undefined, anything else, or an
//! evaluation error denies.

use envoy_types::ext_authz::v3::pb::{
    Address, Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use envoy_types::pb::google::rpc;
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use crate::Pdp;

/// OPA-Envoy's default decision path.
pub const DEFAULT_PATH: &str = "envoy/authz/allow";

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
        let input = opa_envoy_input(request.get_ref());
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        let decision = match self.pdp.current() {
            Ok(policies) => policies.query(&path, Some(&input)),
            Err(_) => Err(zt_policy::rego::QueryError::Eval(
                "policy store unavailable".into(),
            )),
        };
        let result = decision.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ext_authz: evaluation failed: denied");
            None
        });
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
        "parsed_body": null,
        "truncated_body": false,
        "version": {"encoding": "protojson", "ext_authz": "v3"},
    })
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
}
