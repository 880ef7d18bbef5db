//! The record stage: one access-log line and the request metrics for every
//! request, refused or answered — the refusal's reason and label from
//! [`Refusal`], so that each is counted and logged exactly once — and the
//! request's span ended with the same outcome, when tracing is on.

use std::time::Instant;

use http::{Method, Request, Response, Uri};

use super::send::ProxyBody;
use super::trace::Traced;
use crate::admin::{Metrics, Status};
use crate::connection::Peer;
use crate::refusal::Refusal;

/// What the access log says of a request, taken as it arrived.
pub(crate) struct Seen {
    method: Method,
    uri: Uri,
    started: Instant,
}

impl Seen {
    pub(crate) fn of<B>(request: &Request<B>) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            started: Instant::now(),
        }
    }
}

/// Logs and counts one request's outcome.
pub(crate) fn request(
    seen: &Seen,
    peer: &Peer,
    outcome: &Result<Response<ProxyBody>, Refusal>,
    metrics: &Metrics,
    traced: Option<Traced>,
) {
    let (method, path) = (&seen.method, seen.uri.path());
    let status = match outcome {
        Ok(response) => {
            let status = response.status();
            tracing::info!(target: "zt::access", peer = %peer.name, addr = %peer.addr, %method, path, status = status.as_u16());
            status
        }
        Err(refusal) => {
            let status = refusal.answer().0;
            metrics.refuse(refusal.label());
            match refusal {
                Refusal::AppUnreachable(_) | Refusal::UnaskedUpgrade => {
                    tracing::warn!(target: "zt::access", peer = %peer.name, addr = %peer.addr, %method, path, status = status.as_u16(), reason = %refusal, "refused");
                }
                _ => {
                    tracing::info!(target: "zt::access", peer = %peer.name, addr = %peer.addr, %method, path, status = status.as_u16(), reason = %refusal, "refused");
                }
            }
            status
        }
    };
    if let Some(traced) = traced {
        traced.end(status, outcome.as_ref().err());
    }
    metrics
        .request_seconds
        .observe(seen.started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&Status {
            code: status.as_u16(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use http_body_util::{BodyExt as _, Empty};

    use super::*;
    use crate::admin::Reason;

    #[test]
    fn a_refusal_is_counted_once_under_its_label_and_its_status() {
        let metrics = Metrics::new(zt_task::Tasks::new());
        let peer = Peer::for_tests(false);
        let seen = Seen::of(&Request::get("/internal?token=1").body(()).unwrap());
        request(&seen, &peer, &Err(Refusal::NotAllowed), &metrics, None);
        let ok = Response::new(Empty::new().map_err(|e| match e {}).boxed());
        request(&seen, &peer, &Ok(ok), &metrics, None);
        let refused = |reason| metrics.refused.get_or_create(&Reason { reason }).get();
        assert_eq!(refused("not_allowed"), 1);
        assert_eq!(metrics.requests.get_or_create(&Status { code: 403 }).get(), 1);
        assert_eq!(metrics.requests.get_or_create(&Status { code: 200 }).get(), 1);
    }
}
