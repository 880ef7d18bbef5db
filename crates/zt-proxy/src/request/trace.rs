//! The trace stage, when `--otlp-endpoint` turns tracing on: a span per request
//! (kind server, named and described by OpenTelemetry's HTTP semantic
//! conventions), continuing the caller's W3C Trace Context, and a new
//! `traceparent` for the app whose parent is that span.
//!
//! A `traceparent` is taken only if it is exactly version `00` as the W3C
//! Trace Context spec writes it (lowercase hex, ids of their exact length and
//! not all zero); anything else is dropped, with its `tracestate`, and the
//! request starts a new trace: a malformed header is never forwarded as it came.
//! With tracing off this stage does not run: the headers pass through untouched,
//! as Envoy passes them without a tracer.
//!
//! The span never carries a query string, a header value or a refusal's logged
//! reason (which may name policies or echo the request): the path, the refusal's
//! label, the verified SPIFFE ID.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::str::FromStr as _;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::connection::Peer;
use crate::refusal::Refusal;

/// The W3C Trace Context header of the caller's span.
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C Trace Context header of vendors' state, forwarded with a valid `traceparent`.
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Length of a version-00 `traceparent`: `00-` 32 hex `-` 16 hex `-` 2 hex.
const TRACEPARENT_LEN: usize = 55;

/// A version-00 `traceparent`, valid by construction: only [`TraceParent::parse`]
/// and a span's own context make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// Parses a header value strictly (W3C Trace Context §3.2, version 00).
    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        let dashes =
            value.get(2) == Some(&b'-') && value.get(35) == Some(&b'-') && value.get(52) == Some(&b'-');
        if value.len() != TRACEPARENT_LEN || !value.starts_with(b"00") || !dashes {
            return None;
        }
        let trace_id: [u8; 16] = lower_hex(value.get(3..35)?)?;
        let parent_id: [u8; 8] = lower_hex(value.get(36..52)?)?;
        let [flags] = lower_hex::<1>(value.get(53..55)?)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The span of `context`, if it is a valid one.
    fn of(context: &SpanContext) -> Option<Self> {
        context.is_valid().then(|| Self {
            trace_id: context.trace_id().to_bytes(),
            parent_id: context.span_id().to_bytes(),
            flags: context.trace_flags().to_u8(),
        })
    }

    /// The header value.
    pub(crate) fn header(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = Vec::with_capacity(TRACEPARENT_LEN);
        text.extend_from_slice(b"00-");
        let hex = |bytes: &[u8], text: &mut Vec<u8>| {
            for byte in bytes {
                text.push(HEX[usize::from(byte >> 4)]);
                text.push(HEX[usize::from(byte & 0xf)]);
            }
        };
        hex(&self.trace_id, &mut text);
        text.push(b'-');
        hex(&self.parent_id, &mut text);
        text.push(b'-');
        hex(&[self.flags], &mut text);
        // Lowercase hex and dashes only: always a valid header value.
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn span_context(&self, state: TraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.parent_id),
            TraceFlags::new(self.flags),
            true,
            state,
        )
    }
}

/// `N` bytes from `2 × N` lowercase hex digits, or `None`.
fn lower_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        let [high, low] = pair else { return None };
        *byte = (digit(*high)? << 4) | digit(*low)?;
    }
    Some(bytes)
}

/// The caller's trace context: one valid `traceparent` (two are ambiguous, so
/// none), and its `tracestate` (its headers joined, as the spec says) if that is
/// valid too.
pub(crate) fn incoming(headers: &HeaderMap) -> Option<(TraceParent, TraceState)> {
    let mut parents = headers.get_all(TRACEPARENT).iter();
    let parent = match (parents.next(), parents.next()) {
        (Some(one), None) => TraceParent::parse(one.as_bytes())?,
        _ => return None,
    };
    let mut joined = String::new();
    for value in headers.get_all(TRACESTATE) {
        let Ok(text) = value.to_str() else {
            return Some((parent, TraceState::NONE));
        };
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(text);
    }
    let state = TraceState::from_str(&joined).unwrap_or(TraceState::NONE);
    Some((parent, state))
}

/// What the app gets in place of the caller's trace headers.
#[derive(Debug, Default)]
pub(crate) struct Forward {
    traceparent: Option<HeaderValue>,
    tracestate: Option<HeaderValue>,
}

impl Forward {
    /// Replaces the caller's trace headers in `headers` by the proxy's.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        if let Some(parent) = &self.traceparent {
            headers.insert(TRACEPARENT, parent.clone());
            if let Some(state) = &self.tracestate {
                headers.insert(TRACESTATE, state.clone());
            }
        }
    }
}

/// A request's span, from its start to the record of its outcome.
pub(crate) struct Traced {
    span: Span,
    /// The headers the app gets.
    pub(crate) forward: Forward,
}

/// Starts the span of `request` from `peer`, continuing the caller's trace if
/// it sent a valid one.
pub(crate) fn start<B>(tracer: &SdkTracer, request: &Request<B>, peer: &Peer) -> Traced {
    let parent = match incoming(request.headers()) {
        Some((parent, state)) => Context::new().with_remote_span_context(parent.span_context(state)),
        None => Context::new(),
    };
    let (name, method) = method(request.method());
    let mut attributes = Vec::with_capacity(10);
    attributes.push(KeyValue::new("http.request.method", method));
    if method == "_OTHER" {
        attributes.push(KeyValue::new(
            "http.request.method_original",
            request.method().as_str().to_owned(),
        ));
    }
    attributes.push(KeyValue::new("url.path", request.uri().path().to_owned()));
    attributes.push(KeyValue::new(
        "url.scheme",
        if peer.verified { "https" } else { "http" },
    ));
    attributes.push(KeyValue::new(
        "network.protocol.version",
        protocol_version(request.version()),
    ));
    attributes.extend(client(peer.addr));
    if peer.verified {
        attributes.push(KeyValue::new("zt.peer.spiffe_id", peer.name.clone()));
    }
    let builder = SpanBuilder::from_name(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes);
    let span = tracer.build_with_context(builder, &parent);
    let context = span.span_context();
    let forward = Forward {
        traceparent: TraceParent::of(context).map(|parent| parent.header()),
        tracestate: Some(context.trace_state().header())
            .filter(|state| !state.is_empty())
            .and_then(|state| HeaderValue::from_str(&state).ok()),
    };
    Traced { span, forward }
}

impl Traced {
    /// The authority the request was admitted with: `server.address` and `server.port`.
    pub(crate) fn admitted(&mut self, host: &str) {
        let Ok(authority) = http::uri::Authority::from_str(host) else {
            return;
        };
        self.span
            .set_attribute(KeyValue::new("server.address", authority.host().to_owned()));
        if let Some(port) = authority.port_u16() {
            self.span
                .set_attribute(KeyValue::new("server.port", i64::from(port)));
        }
    }

    /// Ends the span with the request's outcome: the status the client got,
    /// the refusal's label if the proxy refused it. Status error for a 5xx only:
    /// a server span's 4xx is the client's error, not the server's
    /// (OpenTelemetry's HTTP span status rules).
    pub(crate) fn end(mut self, status: StatusCode, refusal: Option<&Refusal>) {
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if let Some(refusal) = refusal {
            self.span
                .set_attribute(KeyValue::new("zt.refusal.reason", refusal.label()));
        }
        if status.is_server_error() {
            let error: Cow<'static, str> = match refusal {
                Some(refusal) => Cow::Borrowed(refusal.label()),
                None => Cow::Owned(status.as_u16().to_string()),
            };
            self.span
                .set_attribute(KeyValue::new("error.type", error.clone()));
            self.span.set_status(Status::error(error));
        }
        self.span.end();
    }
}

/// The span's name and `http.request.method`: a known method, or `HTTP` and `_OTHER`.
fn method(method: &Method) -> (&'static str, &'static str) {
    let known = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => return ("HTTP", "_OTHER"),
    };
    (known, known)
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn client(addr: SocketAddr) -> [KeyValue; 2] {
    [
        KeyValue::new("client.address", addr.ip().to_string()),
        KeyValue::new("client.port", i64::from(addr.port())),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_spec_traceparent_parses_and_formats_back() {
        let parent = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(parent.flags, 1);
        assert_eq!(parent.parent_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(parent.header(), GOOD);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            TraceParent::parse(unsampled.as_bytes()).unwrap().header(),
            unsampled
        );
    }

    #[test]
    fn anything_but_an_exact_version_00_traceparent_is_refused() {
        let bad = [
            "",
            "00",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            // Other versions, including the forbidden ff.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Lengths one off, either way.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-1",
            // Separators and stray characters.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
        ];
        for text in bad {
            assert_eq!(TraceParent::parse(text.as_bytes()), None, "{text:?}");
        }
    }

    #[test]
    fn one_traceparent_is_taken_with_its_joined_tracestate() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        headers.append(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        headers.append(TRACESTATE, HeaderValue::from_static("rojo=00f067aa0ba902b7"));
        let (parent, state) = incoming(&headers).unwrap();
        assert_eq!(parent.header(), GOOD);
        assert_eq!(state.header(), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");

        headers.insert(TRACESTATE, HeaderValue::from_static("not a list member"));
        assert_eq!(incoming(&headers).unwrap().1.header(), "");

        headers.append(TRACEPARENT, HeaderValue::from_static(GOOD));
        assert!(incoming(&headers).is_none(), "two traceparents are ambiguous");
        assert!(incoming(&HeaderMap::new()).is_none());
    }

    #[test]
    fn the_app_gets_the_proxys_headers_and_never_the_callers_bad_ones() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("00-bad"));
        headers.insert(TRACESTATE, HeaderValue::from_static("a=b"));
        Forward::default().apply(&mut headers);
        assert!(headers.is_empty(), "{headers:?}");
        let ours = TraceParent::parse(GOOD.as_bytes()).unwrap().header();
        Forward {
            traceparent: Some(ours.clone()),
            tracestate: Some(HeaderValue::from_static("a=b")),
        }
        .apply(&mut headers);
        assert_eq!(headers[TRACEPARENT], ours);
        assert_eq!(headers[TRACESTATE], "a=b");
    }

    proptest::proptest! {
        #[test]
        fn every_traceparent_formatted_parses_back(
            trace_id in proptest::array::uniform16(proptest::num::u8::ANY),
            parent_id in proptest::array::uniform8(proptest::num::u8::ANY),
            flags: u8,
        ) {
            let parent = TraceParent { trace_id, parent_id, flags };
            let parsed = TraceParent::parse(parent.header().as_bytes());
            let valid = trace_id != [0; 16] && parent_id != [0; 8];
            proptest::prop_assert_eq!(parsed, valid.then_some(parent));
        }

        #[test]
        fn a_parsed_traceparent_is_exactly_what_was_sent(value in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            if let Some(parent) = TraceParent::parse(&value) {
                let header = parent.header();
                proptest::prop_assert_eq!(header.as_bytes(), &value[..]);
            }
        }
    }

    #[test]
    fn methods_are_named_as_the_semantic_conventions_say() {
        assert_eq!(method(&Method::GET), ("GET", "GET"));
        assert_eq!(method(&Method::from_bytes(b"PURGE").unwrap()), ("HTTP", "_OTHER"));
    }
}
