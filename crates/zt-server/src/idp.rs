//! The OpenID Provider's place in the server: its signing keys are the trust
//! domain's JWT authorities (rotated with overlap by [`AuthorityManager`]),
//! and it is served over TLS on a listener of its own.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;
use zt_identity::jwk::PublicKey;
use zt_identity::{Algorithm, Bundle, JwtSvidError};
use zt_idp::{Keys, Peer, Provider};

use crate::authority::AuthorityManager;
use crate::server_tls::ServerTls;

/// The JWT authorities as the provider's keys.
pub struct AuthorityKeys(pub Arc<AuthorityManager>);

impl Keys for AuthorityKeys {
    fn sign(&self, typ: &str, claims: &Value) -> Result<String, JwtSvidError> {
        zt_identity::jwt::sign_jws(self.0.current().active.jwt_signer(), typ, claims)
    }

    fn verification_keys(&self) -> Vec<(String, Algorithm, PublicKey)> {
        self.0
            .current()
            .bundle
            .jwt_authorities()
            .map(|(kid, key)| (kid.to_owned(), Algorithm::for_key(key), key.clone()))
            .collect()
    }

    fn bundle(&self) -> Bundle {
        self.0.current().bundle.clone()
    }
}

/// Serves the provider on `listener` until `stop`; prunes spent grants and
/// signs the event log's checkpoints meanwhile.
pub async fn serve(
    provider: Provider,
    tls: Arc<ServerTls>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let router = provider.router();
    let mut connections = tls.accept(listener, stop.clone());
    let mut housekeeping = tokio::time::interval(std::time::Duration::from_secs(10));
    let mut last_prune = 0;
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            conn = connections.recv() => {
                let Some(Ok(conn)) = conn else { return };
                let peer = Peer {
                    addr: conn.peer.addr.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                    certificate_sha256: conn.peer.certificate_sha256.clone(),
                    spiffe_id: conn.peer.spiffe_id.as_ref().map(ToString::to_string),
                };
                let (provider, router) = (provider.clone(), router.clone());
                tokio::spawn(async move { provider.serve_connection(conn.stream, peer, router).await });
            }
            _ = housekeeping.tick() => {
                provider.auth_events().checkpoint_if_due();
                let now = crate::now();
                if now >= last_prune + 600 {
                    last_prune = now;
                    if let Err(e) = provider.prune(now).await {
                        tracing::warn!(error = %e, "pruning spent codes and refresh tokens failed");
                    }
                }
            }
            () = &mut stopped => return,
        }
    }
}
