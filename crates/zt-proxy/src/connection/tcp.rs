//! Opaque TCP to the app (`--app-protocol tcp`, `--tcp-inbound`): an allowed
//! peer the policies let in gets its bytes relayed as they are.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::{Context, Peer};
use crate::refusal::Refusal;

/// Relays `io` to the app until either side closes; the caller ends it when
/// the peer's SVID is revoked.
pub(super) async fn relay<IO>(io: &mut IO, peer: &Peer, context: &Arc<Context>) -> Result<(), Refusal>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if !peer.allowed {
        return Err(Refusal::NotAllowed);
    }
    if let Some(authz) = &context.config.authz {
        authz.authorize(&peer.policy_request(None)).await?;
    }
    let app = context.config.app;
    let mut upstream = TcpStream::connect(app)
        .await
        .map_err(|e| Refusal::AppUnreachable(format!("{app}: {e}")))?;
    let _ = upstream.set_nodelay(true);
    tracing::info!(target: "zt::access", peer = %peer.name, addr = %peer.addr, "tcp connection to the app");
    if let Err(e) = tokio::io::copy_bidirectional(io, &mut upstream).await {
        tracing::debug!(peer = %peer.name, error = %e, "tcp relay ended");
    }
    Ok(())
}
