//! CUSTOM policies' external authorizers, evaluated in process: each provider
//! name is a Rego rule, given OPA-Envoy's input shape.

use std::collections::BTreeMap;

use zt_policy::Request;

/// CUSTOM policies' external authorizers, evaluated in process: each provider
/// name is a Rego rule, given OPA-Envoy's input shape.
pub struct RegoProviders {
    /// The Rego modules.
    pub policies: zt_policy::rego::RegoPolicies,
    /// Provider name → the rule's path (`envoy/authz/allow`).
    pub rules: BTreeMap<String, String>,
}

impl std::fmt::Debug for RegoProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegoProviders({:?})", self.rules)
    }
}

impl zt_policy::ExternalAuthorizer for RegoProviders {
    fn check(&self, provider: &str, request: &Request) -> Result<bool, String> {
        let rule = self
            .rules
            .get(provider)
            .ok_or_else(|| format!("no provider {provider:?} (--custom-provider NAME=RULE)"))?;
        let path: Vec<&str> = rule.split('/').filter(|s| !s.is_empty()).collect();
        let input = envoy_input(request);
        let result = self
            .policies
            .query(&path, Some(&input))
            .map_err(|e| e.to_string())?;
        Ok(zt_policy::rego::allows(result.as_ref()))
    }
}

/// A request in OPA-Envoy's input shape (the fields the proxy knows).
fn envoy_input(request: &Request) -> serde_json::Value {
    let http = request.request.as_ref();
    let target = http.map_or("", |h| h.path.as_str());
    let (parsed_path, parsed_query) = zt_policy::rego::parsed_path_and_query(target);
    let query = target.split_once('?').map_or("", |(_, q)| q);
    serde_json::json!({
        "attributes": {
            "source": {
                "principal": request.source.principal.clone().unwrap_or_default(),
                "address": {"socketAddress": {"address": request.source.ip.map(|ip| ip.to_string())}},
            },
            "destination": {
                "address": {"socketAddress": {"portValue": request.destination.port}},
            },
            "request": {"http": http.map(|h| serde_json::json!({
                "method": h.method,
                "path": target,
                "host": h.host,
                "headers": h.headers,
                "query": query,
            }))},
        },
        "parsed_path": parsed_path,
        "parsed_query": parsed_query,
    })
}
