//! Watching one peer's SVID for revocation, for as long as its connection
//! (or an upgraded tunnel of it) lives.

use std::sync::Arc;

use crate::identity::{IdentityWatch, PeerSvid};

/// Watches for the revocation of one peer's SVID.
#[derive(Clone)]
pub(crate) struct Revocation {
    updates: IdentityWatch,
    peer: Arc<PeerSvid>,
}

impl Revocation {
    pub(crate) fn new(updates: IdentityWatch, peer: PeerSvid) -> Self {
        Self {
            updates,
            peer: Arc::new(peer),
        }
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.updates
            .borrow()
            .as_ref()
            .is_some_and(|i| i.is_revoked(&self.peer))
    }

    /// Completes when the serial is revoked; never, once updates have ended
    /// (the proxy is stopping and serves its connections out).
    pub(crate) async fn revoked(&mut self) {
        loop {
            if self.updates.changed().await.is_err() {
                return std::future::pending().await;
            }
            if self.is_revoked() {
                return;
            }
        }
    }

    /// [`Revocation::revoked`], or never without a watch (a plaintext peer).
    pub(crate) async fn of(watch: Option<Self>) {
        match watch {
            Some(mut revocation) => revocation.revoked().await,
            None => std::future::pending().await,
        }
    }
}
