//! The send stage: the rewritten request to the app over a pooled client
//! connection, its body held to `--max-request-body`.

use std::future::Future;
use std::net::SocketAddr;

use http::{Request, Response};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::inbound::AppProtocol;
use crate::refusal::Refusal;

/// Errors of bodies in either direction.
type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// A body on its way through the proxy.
pub(crate) type ProxyBody = BoxBody<Bytes, BodyError>;

/// The app behind a listener, and the client that reaches it.
pub(crate) struct App {
    /// Its address as a URI authority.
    pub(crate) authority: http::uri::Authority,
    /// What it speaks.
    pub(crate) protocol: AppProtocol,
    client: Client<AppConnector, ProxyBody>,
}

impl App {
    pub(crate) fn new(addr: SocketAddr, protocol: AppProtocol) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(protocol == AppProtocol::H2c)
            .build(AppConnector { addr });
        Self {
            // A socket address always forms a valid authority.
            authority: http::uri::Authority::try_from(addr.to_string())
                .unwrap_or_else(|_| http::uri::Authority::from_static("127.0.0.1")),
            protocol,
            client,
        }
    }

    /// Sends `parts` with `body`, at most `max_body` bytes of it.
    pub(crate) async fn send(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        max_body: Option<u64>,
    ) -> Result<Response<Incoming>, Refusal> {
        let body = limited(&parts, body, max_body)?;
        self.client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| {
                // The app saw a chunked body cut short, never its last chunk: it
                // cannot take it for a whole one.
                if is_over_body_limit(&e) {
                    Refusal::BodyTooLarge
                } else {
                    Refusal::AppUnreachable(e.to_string())
                }
            })
    }
}

/// `body`, held to `max` bytes: a declared length over it is refused now, a
/// streamed body fails when it passes it.
fn limited<B>(parts: &http::request::Parts, body: B, max: Option<u64>) -> Result<ProxyBody, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BodyError>,
{
    let Some(max) = max else {
        return Ok(body.map_err(Into::into).boxed());
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(Refusal::BodyTooLarge);
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    Ok(http_body_util::Limited::new(body, limit).boxed())
}

/// Whether a failed exchange with the app was the request body going over
/// `--max-request-body`.
fn is_over_body_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Dials the app whatever a request's URI names: the URI's authority is the
/// caller's (an h2c app reads `:authority` as its host), the address is the
/// app's.
#[derive(Clone)]
struct AppConnector {
    addr: SocketAddr,
}

impl tower_service::Service<http::Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.addr;
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tcp))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use http_body_util::{BodyExt as _, Full};

    use super::*;

    fn parts(length: Option<&str>) -> http::request::Parts {
        let mut request = Request::builder().uri("/upload");
        if let Some(length) = length {
            request = request.header("content-length", length);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn bodies_are_held_to_the_limit_declared_or_streamed() {
        let body = || Full::new(Bytes::from_static(b"0123456789"));
        assert_eq!(
            limited(&parts(Some("10")), body(), Some(9)).err(),
            Some(Refusal::BodyTooLarge),
            "a declared length over the limit is refused before anything is sent"
        );
        let whole = limited(&parts(Some("10")), body(), Some(10)).unwrap();
        assert_eq!(whole.collect().await.unwrap().to_bytes().len(), 10);
        // Streamed (no length): the body fails when it passes the limit, and
        // the failure is recognized as the limit's.
        let cut = limited(&parts(None), body(), Some(4)).unwrap();
        let error = cut.collect().await.unwrap_err();
        assert!(is_over_body_limit(error.as_ref()));
        let unlimited = limited(&parts(None), body(), None).unwrap();
        assert_eq!(unlimited.collect().await.unwrap().to_bytes().len(), 10);
    }
}
