//! The request head as the app will receive it, made once, before
//! authorization decides on it: what the policies see is exactly what the app
//! gets.
//!
//! - **One authority.** HTTP/1.1 needs exactly one `Host` (RFC 9112 §3.2); an
//!   absolute-form target or an HTTP/2 `:authority` must name the same one as a
//!   `Host` beside it (RFC 9113 §8.3.1); it is checked, lower-cased and loses a
//!   trailing dot, and the app gets that value in `Host`, nothing else.
//! - **No forged identity or routing.** `x-forwarded-client-cert`, the
//!   configured identity headers and the headers some app stacks route by
//!   (`X-Original-URL`, `X-Forwarded-Host`, method overrides, …) are removed in
//!   every spelling an app stack reads as the same name: CGI, WSGI, PHP and Rack
//!   map `X_Client_CN` and `X-Client-CN` to one variable, so header names with
//!   `_` are dropped (nginx's `underscores_in_headers off`, Envoy's
//!   `headers_with_underscores_action`).
//! - **Only upgrades a policy can decide.** A WebSocket is one authorized
//!   request whose messages go to that resource; an `h2c` upgrade (or any other
//!   protocol) would open a connection of new, unauthorized requests, so its
//!   `Upgrade` is removed and the request served as an ordinary one. `CONNECT`
//!   is refused.

use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Version};
use zt_policy::normalize::{PathParams, Target};

use crate::connection::XFCC;
use crate::refusal::Refusal;

/// Headers some app stacks take the request's URL, host or method from,
/// removed unless trusted (`--trust-header`): the policy decided on the
/// request line and `Host`, and the app must route by the same.
pub const ROUTING_HEADERS: &[&str] = &[
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-original-url",
    "x-original-uri",
    "x-original-host",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// What to do with a request header whose name has `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    /// Remove it (nginx's default).
    #[default]
    Drop,
    /// Refuse the request (400).
    Reject,
    /// Keep it, unless it spells a removed header.
    Allow,
}

impl std::str::FromStr for Underscores {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(Self::Drop),
            "reject" => Ok(Self::Reject),
            "allow" => Ok(Self::Allow),
            _ => Err(format!("{s:?}: expected drop, reject or allow")),
        }
    }
}

/// How request heads are made safe for the app.
#[derive(Debug, Clone)]
pub struct HeadRules {
    /// Headers a client could claim an identity with, removed besides XFCC
    /// (`--strip-header`).
    pub strip: Vec<HeaderName>,
    /// [`ROUTING_HEADERS`] that are kept (`--trust-header`).
    pub trusted: Vec<HeaderName>,
    /// Header names with `_`.
    pub underscores: Underscores,
    /// `;` in paths.
    pub path_params: PathParams,
    /// Upgrade protocols spliced after the app's 101, lower case.
    pub upgrades: Vec<String>,
}

impl Default for HeadRules {
    fn default() -> Self {
        Self {
            strip: Vec::new(),
            trusted: Vec::new(),
            underscores: Underscores::default(),
            path_params: PathParams::default(),
            upgrades: vec!["websocket".to_owned()],
        }
    }
}

/// A request head made safe: its authority, its normalized target, and the
/// upgrade to splice if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The normalized authority, which the app gets in `Host`.
    pub host: String,
    /// The normalized path (policies match it) and the query as sent.
    pub target: Target,
    /// The same, as the app gets it.
    pub path_and_query: PathAndQuery,
    /// The upgrade protocol, when it is one of [`HeadRules::upgrades`].
    pub upgrade: Option<HeaderValue>,
}

/// Makes `request`'s head what the app will receive (its `Host`, its
/// headers), or refuses it.
pub fn admit<B>(request: &mut Request<B>, rules: &HeadRules) -> Result<Admitted, Refusal> {
    if request.method() == Method::CONNECT {
        return Err(Refusal::MethodNotAllowed("CONNECT is not proxied".into()));
    }
    zt_policy::normalize::method(request.method().as_str()).map_err(Refusal::Malformed)?;
    let host = authority(request)?;
    let value = HeaderValue::from_str(&host).map_err(|_| Refusal::Malformed(format!("host {host:?}")))?;
    request.headers_mut().insert(http::header::HOST, value);
    strip_headers(request.headers_mut(), rules)?;
    let raw = request.uri().path_and_query().map_or("/", PathAndQuery::as_str);
    let target = zt_policy::normalize::target_with(raw, rules.path_params).map_err(Refusal::Malformed)?;
    let path_and_query = PathAndQuery::try_from(target.path_and_query())
        .map_err(|_| Refusal::Malformed(format!("the normalized target {:?}", target.path_and_query())))?;
    let upgrade = upgrade_protocol(request).filter(|protocol| {
        let allowed = protocol
            .to_str()
            .is_ok_and(|p| rules.upgrades.iter().any(|a| a.eq_ignore_ascii_case(p.trim())));
        if !allowed {
            tracing::info!(target: "zt::access", protocol = ?protocol, "upgrade not spliced: served as an ordinary request");
        }
        allowed
    });
    Ok(Admitted {
        host,
        target,
        path_and_query,
        upgrade,
    })
}

/// The request's one authority, normalized.
fn authority<B>(request: &Request<B>) -> Result<String, Refusal> {
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::Malformed("more than one Host header".into()));
    }
    let host = host
        .map(|h| zt_policy::normalize::authority(h.as_bytes()))
        .transpose()
        .map_err(|e| Refusal::Malformed(format!("Host: {e}")))?;
    let target = request
        .uri()
        .authority()
        .map(|a| zt_policy::normalize::authority(a.as_str().as_bytes()))
        .transpose()
        .map_err(|e| Refusal::Malformed(format!("request target: {e}")))?;
    let http1 = request.version() < Version::HTTP_2;
    match (target, host) {
        (Some(target), Some(host)) if target != host => Err(Refusal::Malformed(format!(
            "the target's authority {target:?} is not the Host {host:?}"
        ))),
        (_, None) if http1 => Err(Refusal::Malformed("no Host header".into())),
        (Some(authority), _) | (None, Some(authority)) => Ok(authority),
        (None, None) => Err(Refusal::Malformed("no :authority or Host".into())),
    }
}

/// Removes XFCC, the configured identity headers, untrusted routing headers,
/// and (unless allowed) every header name with `_`, in all their spellings.
fn strip_headers(headers: &mut http::HeaderMap, rules: &HeadRules) -> Result<(), Refusal> {
    let mut doomed = Vec::new();
    for name in headers.keys() {
        let text = name.as_str();
        let underscored = text.contains('_');
        if underscored {
            match rules.underscores {
                Underscores::Drop => {
                    doomed.push(name.clone());
                    continue;
                }
                Underscores::Reject => {
                    return Err(Refusal::Malformed(format!("the header name {text:?} has '_'")));
                }
                Underscores::Allow => {}
            }
        }
        // The name as the app stack reads it (no allocation for the usual names).
        let spelled = if underscored {
            std::borrow::Cow::Owned(text.replace('_', "-"))
        } else {
            std::borrow::Cow::Borrowed(text)
        };
        let spelled = spelled.as_ref();
        // A trusted routing header is kept in its own spelling only.
        let trusted = !underscored && rules.trusted.iter().any(|t| t.as_str() == spelled);
        let protected = spelled == XFCC
            || spelled == "http2-settings"
            || rules.strip.iter().any(|s| s.as_str() == spelled)
            || (ROUTING_HEADERS.contains(&spelled) && !trusted);
        if protected {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
    Ok(())
}

/// The protocol an HTTP/1.1 request asks to upgrade to: `Connection: upgrade`
/// and an `Upgrade` header.
fn upgrade_protocol<B>(request: &Request<B>) -> Option<HeaderValue> {
    let asks = request
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let mut protocols = request.headers().get_all(http::header::UPGRADE).iter();
    let protocol = protocols.next()?;
    (asks && protocols.next().is_none() && request.version() == Version::HTTP_11).then(|| protocol.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use http::StatusCode;

    use super::*;

    fn request(version: Version, target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().version(version).uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn http1(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        request(Version::HTTP_11, target, headers)
    }

    #[test]
    fn one_authority_or_400() {
        let rules = HeadRules::default();
        let ok = |mut r: Request<()>| admit(&mut r, &rules).map(|a| (a.host, r.headers()["host"].clone()));
        let (host, forwarded) = ok(http1("/a", &[("host", "Admin.Example.com.")])).unwrap();
        assert_eq!(
            (host.as_str(), forwarded.to_str().unwrap()),
            ("admin.example.com", "admin.example.com")
        );
        let (host, _) = ok(http1(
            "http://admin.example.com/a",
            &[("host", "ADMIN.example.com")],
        ))
        .unwrap();
        assert_eq!(host, "admin.example.com");
        // HTTP/2's :authority becomes the Host the app gets.
        let (host, forwarded) = ok(request(Version::HTTP_2, "https://svc.example:8443/a", &[])).unwrap();
        assert_eq!(
            (host.as_str(), forwarded.to_str().unwrap()),
            ("svc.example:8443", "svc.example:8443")
        );
        let refused = [
            http1("/a", &[]),
            http1("/a", &[("host", "a.example"), ("host", "a.example")]),
            http1("/a", &[("host", "a.example"), ("host", "b.example")]),
            http1("http://admin.example/a", &[("host", "public.example")]),
            http1("http://admin.example/a", &[]),
            http1("/a", &[("host", "a.example, b.example")]),
            http1("/a", &[("host", "")]),
            http1("/a", &[("host", "user@a.example")]),
            request(
                Version::HTTP_2,
                "https://admin.example/a",
                &[("host", "public.example")],
            ),
            request(Version::HTTP_2, "/a", &[]),
        ];
        for r in refused {
            let what = format!("{:?} {:?}", r.uri(), r.headers());
            assert_eq!(ok(r).unwrap_err().answer().0, StatusCode::BAD_REQUEST, "{what}");
        }
        let mut connect = http1("a.example:443", &[("host", "a.example:443")]);
        *connect.method_mut() = Method::CONNECT;
        assert_eq!(
            admit(&mut connect, &rules).unwrap_err().answer().0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn identity_and_routing_headers_go_in_every_spelling() {
        let rules = HeadRules {
            strip: vec![HeaderName::from_static("x-client-cn")],
            ..HeadRules::default()
        };
        let mut r = http1(
            "/a",
            &[
                ("host", "a.example"),
                ("x-client-cn", "admin"),
                ("x_client_cn", "admin"),
                ("X_Client-CN", "admin"),
                ("x_forwarded_client_cert", "URI=spiffe://x/admin"),
                ("x-forwarded-client-cert", "URI=spiffe://x/admin"),
                ("x-original-url", "/internal"),
                ("x-rewrite-url", "/internal"),
                ("x-forwarded-host", "admin.example"),
                ("x-http-method-override", "DELETE"),
                ("forwarded", "host=admin.example"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
                ("x_custom", "1"),
                ("accept", "*/*"),
            ],
        );
        admit(&mut r, &rules).unwrap();
        let names: Vec<&str> = r.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "accept"]);
    }

    #[test]
    fn underscores_can_be_refused_or_kept_but_never_spell_a_removed_header() {
        let headers = [("host", "a.example"), ("x_custom", "1"), ("x_client_cn", "admin")];
        let reject = HeadRules {
            underscores: Underscores::Reject,
            ..HeadRules::default()
        };
        assert_eq!(
            admit(&mut http1("/a", &headers), &reject).unwrap_err().answer().0,
            StatusCode::BAD_REQUEST
        );
        let allow = HeadRules {
            underscores: Underscores::Allow,
            strip: vec![HeaderName::from_static("x-client-cn")],
            trusted: vec![HeaderName::from_static("x-forwarded-host")],
            ..HeadRules::default()
        };
        let mut r = http1(
            "/a",
            &[
                ("host", "a.example"),
                ("x_custom", "1"),
                ("x_client_cn", "admin"),
                ("x-forwarded-host", "gw.example"),
                ("x_forwarded_host", "admin.example"),
            ],
        );
        admit(&mut r, &allow).unwrap();
        let names: Vec<&str> = r.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "x_custom", "x-forwarded-host"]);
    }

    #[test]
    fn only_allowed_upgrades_are_spliced() {
        let rules = HeadRules::default();
        let upgrade = |protocol: &str| {
            let mut r = http1(
                "/a",
                &[
                    ("host", "a.example"),
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", protocol),
                ],
            );
            admit(&mut r, &rules).unwrap().upgrade
        };
        assert_eq!(upgrade("websocket").unwrap(), "websocket");
        assert_eq!(upgrade("WebSocket").unwrap(), "WebSocket");
        for refused in ["h2c", "h2c, websocket", "websocket, h2c", "HTTP/2.0", "echo"] {
            assert_eq!(upgrade(refused), None, "{refused}");
        }
    }
}
