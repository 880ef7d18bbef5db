//! The trust domain's signing authorities and their rotation, on SPIRE's schedule:
//! the next authority is prepared at half the active one's life (and from then on
//! is in the bundle), and activated at five sixths. Both stay in the bundle while
//! they overlap, so no SVID fails validation across a rotation.
//!
//! Every server on the datastore runs this; each step is decided in the datastore
//! under one lock (`Store::take_authority_step`), so servers starting or rotating
//! together agree on one prepared and one active authority.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use zt_ca::{Authority, KeyType};
use zt_identity::{Bundle, TrustDomain};
use zt_store::{AuthorityStep, Store, StoreError, StoredAuthority};

use crate::now;

/// What the server signs with, and what it hands out as the trust bundle.
pub struct Authorities {
    /// The authority that signs SVIDs now.
    pub active: Authority,
    /// Every authority not yet expired: the active, a prepared next and the previous one.
    pub bundle: Bundle,
    /// The authorities of the bundle, each able to sign a revocation list for what it issued.
    pub all: Vec<Authority>,
    /// What this was built from: each stored authority's ID and activation number.
    schedule: Vec<(String, Option<u64>)>,
}

/// Why the authorities could not be loaded or rotated.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The datastore.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Generating or reading an authority.
    #[error("authority {id}: {source}")]
    Ca {
        /// Which authority.
        id: String,
        /// What failed.
        source: zt_ca::CaError,
    },
    /// After bootstrapping, still none active (another server removed it?).
    #[error("no active signing authority in the datastore")]
    NoneActive,
}

/// Keeps the authorities current and rotates them when due.
pub struct AuthorityManager {
    store: Store,
    trust_domain: TrustDomain,
    ca_ttl: Duration,
    key_type: KeyType,
    current: watch::Sender<Arc<Authorities>>,
}

impl AuthorityManager {
    /// Loads the authorities, creating and activating the first if there is none.
    pub async fn start(
        store: Store,
        trust_domain: TrustDomain,
        ca_ttl: Duration,
        key_type: KeyType,
    ) -> Result<Arc<Self>, AuthorityError> {
        let first = Self::build(&store, &trust_domain, ca_ttl, key_type, now()).await?;
        let (current, _) = watch::channel(Arc::new(first));
        Ok(Arc::new(Self {
            store,
            trust_domain,
            ca_ttl,
            key_type,
            current,
        }))
    }

    /// The current authorities; cheap.
    pub fn current(&self) -> Arc<Authorities> {
        self.current.borrow().clone()
    }

    /// Wakes when the authorities (and so the bundle) change.
    pub fn watch(&self) -> watch::Receiver<Arc<Authorities>> {
        self.current.subscribe()
    }

    /// Re-reads the authorities and does whatever step of the rotation is due.
    pub async fn tick(&self) -> Result<(), AuthorityError> {
        let next = Self::build(&self.store, &self.trust_domain, self.ca_ttl, self.key_type, now()).await?;
        let changed = {
            let old = self.current.borrow();
            old.bundle.x509_authorities() != next.bundle.x509_authorities()
                || old.active.certificate() != next.active.certificate()
        };
        if changed {
            tracing::info!(
                active = %zt_identity::x509::hex_compact(&zt_identity::x509::summarize(next.active.certificate()).map(|s| s.serial).unwrap_or_default()),
                authorities = next.bundle.x509_authorities().len(),
                "signing authorities changed"
            );
            self.current.send_replace(Arc::new(next));
        }
        Ok(())
    }

    /// Forces a rotation now: activates the prepared authority, or a new one if none
    /// is prepared. The previous one stays in the bundle until it expires. Servers
    /// asked at the same time rotate once: each rotates away from the authority it
    /// saw active, and only the first finds it still active.
    pub async fn rotate_now(&self) -> Result<(), AuthorityError> {
        let now = now();
        let stored = self.store.authorities(now).await?;
        let active = latest_active(&stored).ok_or(AuthorityError::NoneActive)?;
        let fresh = generate(&self.trust_domain, self.ca_ttl, self.key_type, now)?;
        let step = AuthorityStep::Rotate {
            active: &active.id,
            fresh: &fresh,
        };
        if self.store.take_authority_step(step, now).await? {
            tracing::info!(target: "zt::audit", from = %active.id, "CA rotated on request");
        } else {
            tracing::info!(target: "zt::audit", from = %active.id, "CA rotation requested: another server rotated first");
        }
        self.tick().await
    }

    /// Whether the authorities served are those stored now (none added, activated
    /// or removed since the last read): readiness asks, so that a server reports
    /// ready only while it serves the same bundle as every other.
    pub async fn is_current(&self) -> Result<bool, AuthorityError> {
        let stored = self.store.authorities(now()).await?;
        Ok(schedule(&stored) == self.current().schedule)
    }

    /// Keeps the authorities current until `stop`: on every datastore change and at
    /// least every `ca_ttl / 100` (bounded to 1–10 s), so each rotation step happens on time.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let period = (self.ca_ttl / 100).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let mut changes = self.store.watch_changes();
        loop {
            // First at once: a change between `start` and subscribing was not seen.
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "authority rotation check failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = changes.changed() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Loads the stored authorities, takes the due rotation step, and assembles the result.
    async fn build(
        store: &Store,
        trust_domain: &TrustDomain,
        ca_ttl: Duration,
        key_type: KeyType,
        now: u64,
    ) -> Result<Authorities, AuthorityError> {
        let mut stored = store.authorities(now).await?;
        let fresh = || generate(trust_domain, ca_ttl, key_type, now);
        let prepared = stored.iter().any(|a| a.activated_at.is_none());
        // Each step is decided in the datastore, against what is stored then: whether
        // this server takes it or another one did first, read what is there after.
        let due = match latest_active(&stored) {
            // A new trust domain: its first authority, active at once.
            None => {
                let fresh = fresh()?;
                store
                    .take_authority_step(AuthorityStep::Bootstrap(&fresh), now)
                    .await?;
                true
            }
            Some(active) if !prepared && past_fraction(active, now, 1, 2) => {
                let fresh = fresh()?;
                let step = AuthorityStep::Prepare {
                    active: &active.id,
                    fresh: &fresh,
                };
                store.take_authority_step(step, now).await?;
                true
            }
            Some(active) if prepared && past_fraction(active, now, 5, 6) => {
                let step = AuthorityStep::Activate { active: &active.id };
                store.take_authority_step(step, now).await?;
                true
            }
            Some(_) => false,
        };
        if due {
            stored = store.authorities(now).await?;
        }
        store.purge_expired_authorities(now).await?;

        let active = latest_active(&stored).ok_or(AuthorityError::NoneActive)?;
        let active = load(active)?;
        let mut bundle = Bundle::new(trust_domain.clone());
        let mut all = Vec::with_capacity(stored.len());
        for stored in &stored {
            let authority = load(stored)?;
            bundle
                .add_x509_authority(authority.certificate().clone())
                .map_err(|e| ca_error(stored, zt_ca::CaError::Bundle(e)))?;
            let jwt = authority.bundle().map_err(|e| ca_error(stored, e))?;
            for (kid, key) in jwt.jwt_authorities() {
                bundle
                    .add_jwt_authority(kid, key.clone())
                    .map_err(|e| ca_error(stored, zt_ca::CaError::Bundle(e)))?;
            }
            all.push(authority);
        }
        bundle.set_sequence(store.latest_change().await?);
        bundle.set_refresh_hint(ca_ttl.as_secs().clamp(10, 300));
        Ok(Authorities {
            active,
            bundle,
            all,
            schedule: schedule(&stored),
        })
    }
}

/// Each stored authority's ID and activation number: what decides the bundle and
/// the signer.
fn schedule(stored: &[StoredAuthority]) -> Vec<(String, Option<u64>)> {
    stored.iter().map(|a| (a.id.clone(), a.activation)).collect()
}

/// The most recently activated authority.
fn latest_active(stored: &[StoredAuthority]) -> Option<&StoredAuthority> {
    stored
        .iter()
        .filter(|a| a.activation.is_some())
        .max_by_key(|a| a.activation)
}

/// Whether at least `num/den` of the authority's life has passed at `now`.
fn past_fraction(a: &StoredAuthority, now: u64, num: u64, den: u64) -> bool {
    let life = a.not_after.saturating_sub(a.not_before);
    let age = now.saturating_sub(a.not_before);
    age.saturating_mul(den) >= life.saturating_mul(num)
}

fn generate(
    trust_domain: &TrustDomain,
    ca_ttl: Duration,
    key_type: KeyType,
    now: u64,
) -> Result<StoredAuthority, AuthorityError> {
    let id = zt_store::random_id()?;
    let authority = Authority::generate(trust_domain.clone(), key_type, ca_ttl, now).map_err(|source| {
        AuthorityError::Ca {
            id: id.clone(),
            source,
        }
    })?;
    let summary = zt_identity::x509::summarize(authority.certificate()).map_err(|e| AuthorityError::Ca {
        id: id.clone(),
        source: e.into(),
    })?;
    Ok(StoredAuthority {
        id,
        ca_cert_pem: authority.certificate_pem(),
        ca_key_pem: authority.key_pem(),
        jwt_key_pem: authority.jwt_key_pem(),
        not_before: summary.not_before,
        not_after: summary.not_after,
        activated_at: None,
        activation: None,
    })
}

fn load(stored: &StoredAuthority) -> Result<Authority, AuthorityError> {
    Authority::from_pem(&stored.ca_cert_pem, &stored.ca_key_pem, &stored.jwt_key_pem)
        .map_err(|e| ca_error(stored, e))
}

fn ca_error(stored: &StoredAuthority, source: zt_ca::CaError) -> AuthorityError {
    AuthorityError::Ca {
        id: stored.id.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(not_before: u64, not_after: u64) -> StoredAuthority {
        StoredAuthority {
            id: "a".into(),
            ca_cert_pem: String::new(),
            ca_key_pem: String::new(),
            jwt_key_pem: String::new(),
            not_before,
            not_after,
            activated_at: Some(not_before),
            activation: Some(1),
        }
    }

    #[test]
    fn rotation_points_follow_spires_schedule() {
        let a = stored(1000, 1000 + 600);
        assert!(!past_fraction(&a, 1299, 1, 2));
        assert!(past_fraction(&a, 1300, 1, 2));
        assert!(!past_fraction(&a, 1499, 5, 6));
        assert!(past_fraction(&a, 1500, 5, 6));
        assert!(!past_fraction(&a, 0, 1, 2), "before notBefore");
    }
}
