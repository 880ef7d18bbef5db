//! Routes: a request's host and path choose one upstream, by the longest
//! path prefix among the routes for its host (or for any host), ending at a
//! segment boundary: `/app` serves `/app` and `/app/x`, never `/apple`.

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use zt_proxy::identity::IdentityWatch;

use std::collections::BTreeMap;

use http::HeaderName;
use zt_policy::request_authentication::ClaimPath;

use crate::config::Route;
use crate::connect::{Connector, MeshTarget};
use crate::request::Body;

/// A route and the pooled mTLS client that reaches its upstream.
pub struct Upstream {
    /// What the configuration says.
    pub route: Route,
    /// The authority the upstream's request target carries.
    pub authority: http::uri::Authority,
    /// Connections to it, pooled.
    pub client: Client<Connector, Body>,
    /// The identity headers it gets (the common ones and its own), each from
    /// a claim (`a.b` reaches into objects).
    pub headers: Vec<(HeaderName, ClaimPath)>,
}

/// Every route.
pub struct Routes(Vec<Upstream>);

impl Routes {
    /// Clients for `routes`, presenting the SVID `identity` holds; every
    /// route gets the `common` identity headers.
    pub fn new(
        routes: &[Route],
        common: &BTreeMap<String, String>,
        identity: &IdentityWatch,
    ) -> Result<Self, String> {
        routes
            .iter()
            .map(|route| {
                let authority = http::uri::Authority::try_from(route.upstream.as_str())
                    .map_err(|e| format!("routes: upstream {:?}: {e}", route.upstream))?;
                let target =
                    MeshTarget::new(route.upstream.clone(), route.spiffe_id.clone(), identity.clone());
                let client =
                    Client::builder(TokioExecutor::new()).build(Connector::Mesh(std::sync::Arc::new(target)));
                let mut headers: BTreeMap<&String, &String> = common.iter().collect();
                headers.extend(&route.headers);
                let headers = headers
                    .into_iter()
                    .map(|(name, claim)| {
                        let name = HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| format!("headers: {name:?} is not a header name"))?;
                        Ok((name, ClaimPath(claim.split('.').map(str::to_owned).collect())))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(Upstream {
                    route: route.clone(),
                    authority,
                    client,
                    headers,
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map(Self)
    }

    /// The route for `host` (normalized, maybe with a port) and `path`
    /// (normalized).
    pub fn choose(&self, host: &str, path: &str) -> Option<&Upstream> {
        let host = host_only(host);
        self.0
            .iter()
            .filter(|u| u.route.host.as_deref().is_none_or(|h| h == host))
            .filter(|u| under(path, &u.route.path))
            // A route for this host beats one for any host; then the longest prefix.
            .max_by_key(|u| (u.route.host.is_some(), u.route.path.len()))
    }
}

/// Whether `path` is `prefix` or below it (`prefix` has no trailing `/`; the
/// root is the empty prefix).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn host_only(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| &authority[..=h.len()]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn prefixes_end_at_segment_boundaries() {
        assert!(under("/app", "/app"));
        assert!(under("/app/x", "/app"));
        assert!(!under("/apple", "/app"));
        assert!(under("/anything", ""));
        assert!(under("/", ""));
        assert_eq!(host_only("localhost:8443"), "localhost");
        assert_eq!(host_only("[::1]:8443"), "[::1]");
        assert_eq!(host_only("example.org"), "example.org");
    }

    #[test]
    fn the_most_specific_route_wins() {
        let config = crate::config::GatewayConfig::parse(
            "listen: 127.0.0.1:1\nurl: https://gw\ntls: {cert: c, key: k}\n\
             oidc: {issuer: https://idp, client_id: gw, client_secret_file: s}\nsession: {key_file: k}\n\
             identity: {cert: a, key: b, bundle: c}\npolicy: {dir: p, namespace: edge}\nroutes:\n\
             - {path: /, upstream: 127.0.0.1:1, spiffe_id: spiffe://td/any}\n\
             - {path: /api, upstream: 127.0.0.1:2, spiffe_id: spiffe://td/api}\n\
             - {host: admin.example, path: /, upstream: 127.0.0.1:3, spiffe_id: spiffe://td/admin}\n",
            std::path::Path::new("/"),
        )
        .unwrap();
        let (_tx, identity) = tokio::sync::watch::channel(None);
        let routes = Routes::new(&config.routes, &config.headers, &identity).unwrap();
        let to = |host: &str, path: &str| routes.choose(host, path).map(|u| u.route.spiffe_id.to_string());
        assert_eq!(to("gw:443", "/api/x").as_deref(), Some("spiffe://td/api"));
        assert_eq!(to("gw", "/apix").as_deref(), Some("spiffe://td/any"));
        assert_eq!(to("admin.example", "/api").as_deref(), Some("spiffe://td/admin"));
    }
}
