//! Outbound: the app talks plaintext to a local port; the proxy originates mTLS
//! with its own SVID to the upstream and requires the upstream's SVID to carry
//! the SPIFFE ID configured for it. Bytes are relayed as they are, so any
//! protocol the upstream's inbound side speaks works (HTTP/1.1, h2c, gRPC, TCP).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use zt_identity::SpiffeId;
use zt_tls::{PeerMatcher, TlsVersions};

use crate::admin::Metrics;
use crate::identity::{Identity, IdentityWatch};

/// How long connecting and the TLS handshake to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One outbound route: a local plaintext port to an mTLS upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Where the app connects, plaintext (loopback).
    pub listen: SocketAddr,
    /// The upstream's inbound mTLS address.
    pub target: String,
    /// The SPIFFE ID the upstream must present.
    pub expect: SpiffeId,
}

impl FromStr for Upstream {
    type Err = String;

    /// `LISTEN,TARGET,SPIFFE_ID`, e.g.
    /// `127.0.0.1:15001,billing.internal:15006,spiffe://example.org/billing`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').collect();
        let [listen, target, expect] = parts.as_slice() else {
            return Err(format!("{s:?}: expected LISTEN,TARGET,SPIFFE_ID"));
        };
        let listen = listen
            .parse()
            .map_err(|_| format!("{s:?}: {listen:?} is not a local IP:PORT"))?;
        if !target.contains(':') {
            return Err(format!("{s:?}: {target:?} is not HOST:PORT"));
        }
        let expect = SpiffeId::parse(expect).map_err(|e| format!("{s:?}: {expect:?}: {e}"))?;
        Ok(Self {
            listen,
            target: (*target).to_owned(),
            expect,
        })
    }
}

/// Relays every connection to `listener` to `upstream` over mTLS, until `stop`.
pub async fn serve(
    listener: TcpListener,
    upstream: Upstream,
    identity: IdentityWatch,
    versions: TlsVersions,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let upstream = Arc::new(upstream);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let Ok((app, _)) = accepted else { continue };
        let current = identity.borrow().clone();
        let Some(current) = current else {
            metrics.refuse_outbound("no_svid_yet");
            continue;
        };
        let (upstream, metrics) = (upstream.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = relay(app, &upstream, &current, versions, &metrics).await {
                tracing::warn!(upstream = %upstream.target, expect = %upstream.expect, error = %e, "outbound connection failed");
            }
        });
    }
}

async fn relay(
    mut app: TcpStream,
    upstream: &Upstream,
    identity: &Identity,
    versions: TlsVersions,
    metrics: &Metrics,
) -> Result<(), String> {
    let _ = app.set_nodelay(true);
    let config = zt_tls::client_config(
        identity.chain.clone(),
        identity.key.clone_key(),
        identity.bundles.clone(),
        PeerMatcher::OneOf(vec![upstream.expect.clone()]),
        versions,
    )
    .map_err(|e| e.to_string())?;
    let connect = async {
        let tcp = TcpStream::connect(&upstream.target).await.map_err(|e| {
            metrics.refuse_outbound("unreachable");
            format!("connect: {e}")
        })?;
        let _ = tcp.set_nodelay(true);
        // The name is not checked (the verifier checks the SPIFFE ID); it is sent as SNI.
        let name = rustls::pki_types::ServerName::try_from(upstream.expect.trust_domain().name().to_owned())
            .map_err(|e| e.to_string())?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                metrics.refuse_outbound("handshake");
                format!(
                    "TLS handshake with {}: {}",
                    upstream.target,
                    zt_tls::handshake_error_text(&e)
                )
            })
    };
    let mut tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            metrics.refuse_outbound("timeout");
            "connect timed out".to_owned()
        })??;
    metrics.outbound_connections.inc();
    tokio::io::copy_bidirectional(&mut app, &mut tls)
        .await
        .map(drop)
        .map_err(|e| format!("relay: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_specs_parse_and_errors_name_the_part() {
        let up: Upstream = "127.0.0.1:15001,billing.internal:15006,spiffe://example.org/billing"
            .parse()
            .unwrap();
        assert_eq!(up.listen, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(up.target, "billing.internal:15006");
        assert_eq!(up.expect.to_string(), "spiffe://example.org/billing");
        for (bad, needle) in [
            ("127.0.0.1:15001,billing:15006", "LISTEN,TARGET,SPIFFE_ID"),
            (
                "localhost:15001,billing:15006,spiffe://example.org/b",
                "\"localhost:15001\"",
            ),
            ("127.0.0.1:15001,billing,spiffe://example.org/b", "\"billing\""),
            (
                "127.0.0.1:15001,billing:1,spiffe://Example.org/b",
                "spiffe://Example.org/b",
            ),
        ] {
            let e = bad.parse::<Upstream>().unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
