//! The rewrite stage: the request head as the app gets it, from the head the
//! policies decided on. Pure: it takes the head's parts and returns them
//! rewritten — target and `Host`/`:authority`, version, hop-by-hop headers
//! gone, the allowed upgrade kept, the caller's identity headers set, the
//! proxy's trace headers in place of the caller's (when tracing is on), a body
//! of unknown length sent chunked.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Uri, Version};

use super::normalize::Admitted;
use crate::inbound::AppProtocol;
use crate::refusal::Refusal;

/// What the rewrite needs to know of the app and the caller.
pub(crate) struct ForApp<'a> {
    /// What the app speaks.
    pub(crate) protocol: AppProtocol,
    /// The app's address, the authority an HTTP/1.1 app's target carries.
    pub(crate) app: &'a http::uri::Authority,
    /// The verified caller's identity headers (XFCC first).
    pub(crate) identity: &'a [(HeaderName, HeaderValue)],
    /// The trace headers the app gets, when tracing is on; else the caller's
    /// pass untouched.
    pub(crate) trace: Option<&'a super::trace::Forward>,
}

/// Rewrites `parts` (admitted as `head`) for the app; `streamed` says the body's
/// length is not known in advance.
pub(crate) fn for_app(
    mut parts: Parts,
    head: &Admitted,
    to: &ForApp<'_>,
    streamed: bool,
) -> Result<Parts, Refusal> {
    let mut target = http::uri::Parts::default();
    target.scheme = Some(http::uri::Scheme::HTTP);
    // An HTTP/1.1 app reads the host from Host (admit set it); an h2c app
    // from :authority, which is then the host and the only one.
    target.authority = match to.protocol {
        AppProtocol::H2c => {
            parts.headers.remove(http::header::HOST);
            Some(
                http::uri::Authority::try_from(head.host.as_str())
                    .map_err(|_| Refusal::Malformed(format!("host {:?}", head.host)))?,
            )
        }
        AppProtocol::Http1 | AppProtocol::Tcp => Some(to.app.clone()),
    };
    target.path_and_query = Some(head.path_and_query.clone());
    parts.uri = Uri::from_parts(target).map_err(|e| Refusal::Malformed(format!("request target: {e}")))?;
    parts.version = match to.protocol {
        AppProtocol::H2c => Version::HTTP_2,
        AppProtocol::Http1 | AppProtocol::Tcp => Version::HTTP_11,
    };
    remove_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = &head.upgrade {
        parts
            .headers
            .insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(http::header::UPGRADE, protocol.clone());
    }
    for (name, value) in to.identity {
        parts.headers.insert(name.clone(), value.clone());
    }
    if let Some(trace) = to.trace {
        trace.apply(&mut parts.headers);
    }
    // Left to itself, the client would drop a GET's body without a word.
    if parts.version == Version::HTTP_11 && streamed {
        parts.headers.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    Ok(parts)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the Connection header names
/// apply to one connection only: they are not forwarded. `TE: trailers` is kept:
/// it says the client takes trailers, which gRPC needs end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let trailers = headers.get(http::header::TE).is_some_and(|te| te == "trailers");
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
    if trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use http::Request;

    use super::*;
    use crate::request::normalize::{HeadRules, admit};

    fn rewritten(request: Request<()>, protocol: AppProtocol, streamed: bool) -> Parts {
        let mut request = request;
        let head = admit(&mut request, &HeadRules::default()).unwrap();
        let app = http::uri::Authority::from_static("127.0.0.1:8080");
        let identity = [(
            HeaderName::from_static("x-client-cn"),
            HeaderValue::from_static("service-one"),
        )];
        let to = ForApp {
            protocol,
            app: &app,
            identity: &identity,
            trace: None,
        };
        for_app(request.into_parts().0, &head, &to, streamed).unwrap()
    }

    #[test]
    fn an_http1_app_gets_the_normalized_target_and_the_verified_identity() {
        let request = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://API.example/a/../b?q=1")
            .header("x-client-cn", "forged")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let parts = rewritten(request, AppProtocol::Http1, true);
        assert_eq!(parts.uri, "http://127.0.0.1:8080/b?q=1");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["host"], "api.example");
        assert_eq!(parts.headers.get_all("x-client-cn").iter().count(), 1);
        assert_eq!(parts.headers["x-client-cn"], "service-one");
        assert!(!parts.headers.contains_key("x-hop") && !parts.headers.contains_key("connection"));
        assert_eq!(parts.headers["te"], "trailers");
        assert_eq!(parts.headers["transfer-encoding"], "chunked");
    }

    #[test]
    fn an_h2c_app_gets_the_host_as_its_authority_only() {
        let request = Request::builder()
            .uri("/svc.Greeter/Hello")
            .header("host", "greeter.internal")
            .body(())
            .unwrap();
        let parts = rewritten(request, AppProtocol::H2c, true);
        assert_eq!(parts.uri, "http://greeter.internal/svc.Greeter/Hello");
        assert_eq!(parts.version, Version::HTTP_2);
        assert!(!parts.headers.contains_key("host"));
        assert!(!parts.headers.contains_key("transfer-encoding"));
    }

    #[test]
    fn an_allowed_upgrade_is_kept_and_a_known_length_is_not_chunked() {
        let request = Request::builder()
            .uri("/ws")
            .header("host", "a")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let parts = rewritten(request, AppProtocol::Http1, false);
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert_eq!(parts.headers["connection"], "upgrade");
        assert!(!parts.headers.contains_key("transfer-encoding"));
    }
}
