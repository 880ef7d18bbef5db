//! One HTTP request, stage by stage, in the order they run:
//!
//! 1. [`allow`] — the peer's SPIFFE ID is on the allow-list;
//! 2. [`normalize`] — the head as the app will receive it, made once: one
//!    authority, the path normalized, forged identity and routing headers
//!    removed in every spelling, only allowed upgrades;
//! 3. [`authenticate`] — the request's JWT, where the RequestAuthentications
//!    in force look for it: absent passes unauthenticated, invalid is a 401;
//!    the app gets the rules' claim headers and (unless forwarded) no token;
//! 4. [`authorize`] — the policies decide on that head; the decision is recorded;
//! 5. [`rewrite`] — target, `Host`, hop-by-hop headers, XFCC and identity headers;
//! 6. [`send`] — to the app, the body held to its limit;
//! 7. [`respond`] — the app's answer for the client (response stages: to come);
//! 8. [`record`] — one access-log line and the metrics, refusals included;
//!    the request's span ended, when [`trace`] started one.
//!
//! With tracing on (`--otlp-endpoint`), [`trace`] starts a span before the
//! first stage, continuing the caller's W3C trace context, and `rewrite` gives
//! the app the proxy's `traceparent`; off, it costs a branch per request.
//!
//! A stage that refuses returns a [`Refusal`], which decides the status, the
//! metric label and the logged reason.

pub mod allow;
mod authenticate;
pub mod authorize;
pub mod normalize;
mod record;
mod respond;
pub mod rewrite;
pub(crate) mod send;
pub(crate) mod trace;

use http::header::HeaderValue;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Bytes, Incoming};

use self::send::ProxyBody;
use crate::connection::{Context, Peer};
use crate::refusal::Refusal;

/// Answers one request: the stages, then the record of what happened.
pub(crate) async fn handle(
    request: Request<Incoming>,
    peer: &Peer,
    context: &Context,
) -> Response<ProxyBody> {
    let seen = record::Seen::of(&request);
    let mut traced = context
        .config
        .tracer
        .as_ref()
        .map(|tracer| trace::start(tracer, &request, peer));
    let outcome = stages(request, peer, context, traced.as_mut()).await;
    record::request(&seen, peer, &outcome, &context.metrics, traced);
    outcome.unwrap_or_else(|refusal| answer(&refusal))
}

async fn stages(
    mut request: Request<Incoming>,
    peer: &Peer,
    context: &Context,
    mut traced: Option<&mut trace::Traced>,
) -> Result<Response<ProxyBody>, Refusal> {
    let config = &context.config;
    allow::check(peer)?;
    let mut head = normalize::admit(&mut request, &config.head)?;
    if let Some(traced) = traced.as_mut() {
        traced.admitted(&head.host);
    }
    if let Some(authz) = &config.authz {
        let verified = match authz.authentication() {
            Some(rules) => authenticate::check(&rules, &mut request, &mut head, &context.metrics).await?,
            None => None,
        };
        authorize::check(authz, &request, &head, peer, verified.as_ref()).await?;
    }
    let client_side = head.upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let streamed = !body.is_end_stream() && body.size_hint().exact().is_none();
    let to = rewrite::ForApp {
        protocol: context.app.protocol,
        app: &context.app.authority,
        identity: &peer.identity_headers,
        trace: traced.as_ref().map(|traced| &traced.forward),
    };
    let parts = rewrite::for_app(parts, &head, &to, streamed)?;
    let response = context
        .app
        .send(parts, body, config.limits.max_body_bytes)
        .await?;
    respond::to_client(response, client_side, peer, &context.metrics)
}

/// The answer to a refused request.
fn answer(refusal: &Refusal) -> Response<ProxyBody> {
    let (status, text) = refusal.answer();
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *response.status_mut() = status;
    if let Refusal::Unauthenticated(_) = refusal {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
