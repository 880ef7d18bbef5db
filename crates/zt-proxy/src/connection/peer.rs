//! The peer of a connection, as the request stages see it: its verified
//! SPIFFE ID (none for plaintext in permissive mode), its addresses, whether
//! the allow-list lets it in, and the identity headers the app gets.

use std::net::SocketAddr;
use std::str::FromStr;

use http::header::{HeaderName, HeaderValue};
use zt_identity::SpiffeId;

use super::revocation::Revocation;

/// The header the app reads the caller's identity from, as Envoy writes it.
pub const XFCC: &str = "x-forwarded-client-cert";

/// The caller on one connection.
pub(crate) struct Peer {
    /// How it appears in logs: its verified SPIFFE ID, or `plaintext`.
    pub(crate) name: String,
    /// Whether it holds a verified SPIFFE ID (mTLS).
    pub(crate) verified: bool,
    pub(crate) addr: SocketAddr,
    /// The address it connected to (the destination of policies).
    pub(crate) local: SocketAddr,
    /// Whether the allow-list lets it reach the app.
    pub(crate) allowed: bool,
    /// The identity headers the app gets (XFCC first); none for plaintext.
    pub(crate) identity_headers: Vec<(HeaderName, HeaderValue)>,
    /// Ends upgraded connections when its SVID is revoked.
    pub(crate) revocation: Option<Revocation>,
}

impl Peer {
    /// A verified peer `spiffe://example.org/one` at 10.0.0.1, connected to
    /// 10.0.0.2:15006, for the stages' unit tests.
    #[cfg(test)]
    #[allow(clippy::unwrap_used, reason = "tests")]
    pub(crate) fn for_tests(allowed: bool) -> Self {
        Self {
            name: "spiffe://example.org/one".into(),
            verified: true,
            addr: "10.0.0.1:5000".parse().unwrap(),
            local: "10.0.0.2:15006".parse().unwrap(),
            allowed,
            identity_headers: Vec::new(),
            revocation: None,
        }
    }

    /// A request (or, without `http`, a TCP connection) from this peer as
    /// policies see it. The destination's namespace and labels are the proxy's
    /// own, applied when its policies were chosen.
    pub(crate) fn policy_request(&self, http: Option<zt_policy::request::Http>) -> zt_policy::Request {
        zt_policy::Request {
            source: zt_policy::request::Source {
                principal: self.verified.then(|| self.name.clone()),
                namespace: None,
                ip: Some(self.addr.ip()),
            },
            destination: zt_policy::request::Destination {
                namespace: String::new(),
                labels: Default::default(),
                port: Some(self.local.port()),
                ip: Some(self.local.ip()),
            },
            protocol: match http {
                Some(_) => zt_policy::request::Protocol::Http,
                None => zt_policy::request::Protocol::Tcp,
            },
            request: http,
            connection: None,
        }
    }
}

/// The identity headers of a verified peer: XFCC (`By=…;Hash=…;URI=…`), then
/// each configured one its SPIFFE ID has every field for.
pub(crate) fn identity_headers(
    own: &SpiffeId,
    peer: &SpiffeId,
    leaf_hash: &str,
    configured: &[IdentityHeader],
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(1 + configured.len());
    if let Ok(xfcc) = HeaderValue::from_str(&format!("By={own};Hash={leaf_hash};URI={peer}")) {
        headers.push((HeaderName::from_static(XFCC), xfcc));
    }
    for header in configured {
        match header.render(peer) {
            Some(value) => headers.push((header.name.clone(), value)),
            None => {
                tracing::debug!(header = %header.name, %peer, "identity header not sent: the SPIFFE ID lacks a field it names")
            }
        }
    }
    headers
}

/// A part of a verified SPIFFE ID an identity header can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The whole ID.
    SpiffeId,
    /// Its trust domain.
    TrustDomain,
    /// Its path, from the first `/`.
    Path,
    /// The namespace of an Istio-style path (`/ns/NS/sa/SA`).
    Namespace,
    /// The service account of an Istio-style path.
    ServiceAccount,
}

impl Field {
    const NAMES: &'static str = "spiffe-id, trust-domain, path, ns, sa";

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "spiffe-id" => Self::SpiffeId,
            "trust-domain" => Self::TrustDomain,
            "path" => Self::Path,
            "ns" => Self::Namespace,
            "sa" => Self::ServiceAccount,
            _ => return None,
        })
    }

    fn of(self, id: &SpiffeId) -> Option<String> {
        let istio = || {
            let mut segments = id.path().strip_prefix('/')?.split('/');
            match (segments.next(), segments.next(), segments.next(), segments.next()) {
                (Some("ns"), Some(ns), Some("sa"), Some(sa)) if segments.next().is_none() => Some((ns, sa)),
                _ => None,
            }
        };
        match self {
            Self::SpiffeId => Some(id.to_string()),
            Self::TrustDomain => Some(id.trust_domain().name().to_owned()),
            Self::Path => Some(id.path().to_owned()),
            Self::Namespace => istio().map(|(ns, _)| ns.to_owned()),
            Self::ServiceAccount => istio().map(|(_, sa)| sa.to_owned()),
        }
    }
}

/// One piece of a header template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A header that hands the app part of the verified caller's identity, for
/// apps that cannot parse XFCC: `NAME=FIELD` or `NAME={FIELD}…` with text
/// between fields (`X-Client-CN={sa}`, `X-Caller={sa}.{ns}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeader {
    /// The header's name.
    pub name: HeaderName,
    pieces: Vec<Piece>,
}

impl IdentityHeader {
    /// The value for `peer`; `None` when its ID lacks a field the template names.
    fn render(&self, peer: &SpiffeId) -> Option<HeaderValue> {
        let mut value = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => value.push_str(text),
                Piece::Field(field) => value.push_str(&field.of(peer)?),
            }
        }
        HeaderValue::from_str(&value).ok()
    }
}

impl FromStr for IdentityHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, template) = s.split_once('=').ok_or_else(|| {
            format!(
                "{s:?}: expected NAME=FIELD or NAME={{FIELD}}… (fields: {})",
                Field::NAMES
            )
        })?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{s:?}: {name:?} is not a header name"))?;
        if name.as_str() == XFCC {
            return Err(format!("{s:?}: {XFCC} is always set by zt proxy"));
        }
        let unknown = |field: &str| format!("{s:?}: unknown field {field:?} (fields: {})", Field::NAMES);
        let mut pieces = Vec::new();
        if !template.contains(['{', '}']) {
            pieces.push(Piece::Field(
                Field::parse(template).ok_or_else(|| unknown(template))?,
            ));
        } else {
            let mut rest = template;
            while !rest.is_empty() {
                match rest.find('{') {
                    Some(0) => {
                        let close = rest
                            .find('}')
                            .ok_or_else(|| format!("{s:?}: a '{{' is not closed"))?;
                        let field = &rest[1..close];
                        pieces.push(Piece::Field(Field::parse(field).ok_or_else(|| unknown(field))?));
                        rest = &rest[close + 1..];
                    }
                    found => {
                        let end = found.unwrap_or(rest.len());
                        let text = &rest[..end];
                        if text.contains('}') {
                            return Err(format!("{s:?}: a '}}' without its '{{'"));
                        }
                        if HeaderValue::from_str(text).is_err() {
                            return Err(format!("{s:?}: {text:?} cannot be part of a header value"));
                        }
                        pieces.push(Piece::Text(text.to_owned()));
                        rest = &rest[end..];
                    }
                }
            }
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Field(_))) {
            return Err(format!(
                "{s:?}: the template names no field (fields: {})",
                Field::NAMES
            ));
        }
        Ok(Self { name, pieces })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn render(spec: &str, peer: &str) -> Option<String> {
        let header: IdentityHeader = spec.parse().unwrap();
        header.render(&id(peer)).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn fields_and_templates_render_from_the_verified_id() {
        let peer = "spiffe://example.org/ns/prod/sa/service-one";
        assert_eq!(render("X-Client-CN=sa", peer).as_deref(), Some("service-one"));
        assert_eq!(render("X-Client-CN={sa}", peer).as_deref(), Some("service-one"));
        assert_eq!(render("X-Ns=ns", peer).as_deref(), Some("prod"));
        assert_eq!(render("X-Id=spiffe-id", peer).as_deref(), Some(peer));
        assert_eq!(render("X-Td=trust-domain", peer).as_deref(), Some("example.org"));
        assert_eq!(
            render("X-Path=path", peer).as_deref(),
            Some("/ns/prod/sa/service-one")
        );
        assert_eq!(
            render("X-Caller={sa}.{ns}@{trust-domain}", peer).as_deref(),
            Some("service-one.prod@example.org")
        );
    }

    #[test]
    fn an_id_without_the_field_sends_no_header() {
        assert_eq!(render("X-Client-CN={sa}", "spiffe://example.org/web"), None);
        assert_eq!(render("X-Ns=ns", "spiffe://example.org/ns/prod/sa/a/extra"), None);
        assert_eq!(
            render("X-Path=path", "spiffe://example.org/web").as_deref(),
            Some("/web")
        );
    }

    #[test]
    fn bad_specs_name_what_is_wrong() {
        for (spec, needle) in [
            ("X-Client-CN", "expected NAME=FIELD"),
            ("X Client=sa", "not a header name"),
            ("X-Client-CN=cn", "unknown field \"cn\""),
            ("X-Client-CN={sa", "not closed"),
            ("X-Client-CN=sa}", "without its"),
            ("X-Client-CN={sa}}", "without its"),
            ("X-Client-CN={user}", "unknown field \"user\""),
            ("x-forwarded-client-cert=sa", "always set"),
        ] {
            let e = spec.parse::<IdentityHeader>().unwrap_err();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn xfcc_comes_first_then_the_configured_headers() {
        let configured = vec!["X-Client-CN={sa}".parse().unwrap(), "X-Ns=ns".parse().unwrap()];
        let headers = identity_headers(
            &id("spiffe://example.org/ns/prod/sa/api"),
            &id("spiffe://example.org/web"),
            "ab12",
            &configured,
        );
        assert_eq!(headers.len(), 1, "the peer has no ns or sa: {headers:?}");
        assert_eq!(headers[0].0, XFCC);
        assert_eq!(
            headers[0].1,
            "By=spiffe://example.org/ns/prod/sa/api;Hash=ab12;URI=spiffe://example.org/web"
        );
        let headers = identity_headers(
            &id("spiffe://example.org/ns/prod/sa/api"),
            &id("spiffe://example.org/ns/prod/sa/one"),
            "ab12",
            &configured,
        );
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [XFCC, "x-client-cn", "x-ns"]);
    }
}
