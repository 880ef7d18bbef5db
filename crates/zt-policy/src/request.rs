//! A request as policies see it. Its JSON form is the input of `zt policy eval`
//! and of `zt policy test` cases, a public contract:
//!
//! ```json
//! {"source":{"principal":"spiffe://…","namespace":"…","ip":"…"},
//!  "destination":{"namespace":"…","labels":{…},"port":8080},
//!  "request":{"method":"GET","path":"/…","host":"…","headers":{…},
//!             "auth":{"principal":"…","claims":{…}}},
//!  "protocol":"http"|"tcp"}
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One request (or, for TCP, one connection).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Who sends it.
    #[serde(default)]
    pub source: Source,
    /// The workload it goes to.
    pub destination: Destination,
    /// The HTTP part; absent for TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Http>,
    /// `http` or `tcp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// `connection.sni`, if the client sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
}

/// The peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The verified SPIFFE ID (`spiffe://…`); absent for plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Absent: taken from the principal's `/ns/NS/` path, as Istio does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The connection's peer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

impl Source {
    /// The namespace, given or from the principal.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace
            .as_deref()
            .or_else(|| self.principal.as_deref().and_then(namespace_of))
    }

    /// The principal in Istio's form: without `spiffe://`.
    pub fn istio_principal(&self) -> Option<&str> {
        self.principal
            .as_deref()
            .map(|p| p.strip_prefix("spiffe://").unwrap_or(p))
    }
}

/// The namespace of an Istio-style SPIFFE ID: `spiffe://TD/ns/NS/sa/SA` → `NS`.
pub fn namespace_of(principal: &str) -> Option<&str> {
    let path = principal.strip_prefix("spiffe://")?.split_once('/')?.1;
    let mut segments = path.split('/');
    match (segments.next(), segments.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// The workload the request is for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The port the caller connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The address the caller connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

/// The HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// As sent; must be upper case.
    pub method: String,
    /// As sent (normalized before matching); may carry a query.
    pub path: String,
    /// `Host` or `:authority`.
    #[serde(default)]
    pub host: String,
    /// Header names are compared in lower case.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The authenticated request identity (JWT), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
}

/// A request credential's identity and claims.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// `ISS/SUB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The token's audiences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The token's authorized presenter (`azp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presenter: Option<String>,
    /// The token's claims.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// The TLS server name the client asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

/// Which fields a request can have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP: every field.
    #[default]
    Http,
    /// Opaque TCP: no HTTP fields.
    Tcp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_come_from_istio_style_ids() {
        assert_eq!(
            namespace_of("spiffe://cluster.local/ns/production/sa/payment"),
            Some("production")
        );
        assert_eq!(namespace_of("spiffe://example.org/payment"), None);
        assert_eq!(namespace_of("spiffe://example.org/ns/"), None);
        assert_eq!(namespace_of("cluster.local/ns/x/sa/y"), None);
    }
}
