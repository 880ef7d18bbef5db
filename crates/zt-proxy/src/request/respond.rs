//! The respond stage: the app's answer as the client gets it — hop-by-hop
//! headers gone, a 101 only for the upgrade the request asked for, after which
//! the two connections are spliced (and cut when the peer's SVID is revoked).
//! Response stages (data-loss prevention) join here.

use std::sync::Arc;

use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::rewrite::remove_hop_by_hop;
use super::send::ProxyBody;
use crate::admin::Metrics;
use crate::connection::{Peer, Revocation};
use crate::refusal::Refusal;

/// The answer for the client; `client_side` is the client's upgrade when the
/// request asked for an allowed one.
pub(crate) fn to_client<B>(
    mut response: Response<B>,
    client_side: Option<OnUpgrade>,
    peer: &Peer,
    metrics: &Arc<Metrics>,
) -> Result<Response<ProxyBody>, Refusal>
where
    B: hyper::body::Body<Data = hyper::body::Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upgrade = match (switching, client_side) {
        (false, _) => None,
        (true, None) => return Err(Refusal::UnaskedUpgrade),
        (true, Some(client_side)) => {
            let protocol = response.headers().get(http::header::UPGRADE).cloned();
            let app_side = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(
                client_side,
                app_side,
                peer.name.clone(),
                peer.revocation.clone(),
                metrics.clone(),
            ));
            protocol
        }
    };
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = upgrade {
        parts
            .headers
            .insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(http::header::UPGRADE, protocol);
    }
    Ok(Response::from_parts(parts, body.map_err(Into::into).boxed()))
}

/// Copies bytes both ways between the upgraded client and app connections, until
/// either closes or the peer's SVID is revoked.
async fn splice(
    client: OnUpgrade,
    app: OnUpgrade,
    peer: String,
    revocation: Option<Revocation>,
    metrics: Arc<Metrics>,
) {
    let (client, app) = match tokio::try_join!(client, app) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "upgrade failed");
            return;
        }
    };
    let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut app) => {
            if let Err(e) = copied {
                tracing::debug!(%peer, error = %e, "upgraded connection ended");
            }
        }
        () = Revocation::of(revocation) => {
            metrics.revoked_connections.inc();
            tracing::info!(%peer, "SVID revoked: upgraded connection closed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use http_body_util::Full;
    use hyper::body::Bytes;

    use super::*;

    fn peer() -> Peer {
        Peer::for_tests(true)
    }

    #[test]
    fn the_client_gets_no_hop_by_hop_header_of_the_app() {
        let response = Response::builder()
            .header("connection", "x-hop, keep-alive")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap();
        let metrics = Arc::new(Metrics::new(zt_task::Tasks::new()));
        let answer = to_client(response, None, &peer(), &metrics).unwrap();
        let names: Vec<&str> = answer.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn a_switch_nobody_asked_for_is_refused() {
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "h2c")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let metrics = Arc::new(Metrics::new(zt_task::Tasks::new()));
        assert_eq!(
            to_client(response, None, &peer(), &metrics).err(),
            Some(Refusal::UnaskedUpgrade)
        );
    }
}
