//! Signing X.509-SVIDs: one rule for the agent API (entries an agent serves) and
//! the admin API (`zt x509 mint`).

use std::time::{Duration, Instant};

use zt_ca::{SignedSvid, SvidRequest};
use zt_identity::SpiffeId;

use crate::authority::AuthorityManager;
use crate::entries::EntryCache;
use crate::metrics::Metrics;
use crate::now;

/// Why an SVID was not signed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignError {
    /// The SPIFFE ID is revoked from now on (a revocation dated in the future).
    #[error("{0} is revoked")]
    Revoked(SpiffeId),
    /// The request: its CSR, ID or names.
    #[error("{0}")]
    Invalid(zt_ca::CaError),
}

/// What signs SVIDs and what it must consult first.
pub(crate) struct Signer<'a> {
    pub authorities: &'a AuthorityManager,
    pub cache: &'a EntryCache,
    pub metrics: &'a Metrics,
}

impl Signer<'_> {
    /// Signs an SVID for `spiffe_id` with the active authority, its lifetime cut to
    /// the CA's, and its notBefore not before a revocation of the ID (an SVID issued
    /// after the revocation must not count as revoked).
    pub fn sign(
        &self,
        csr: &[u8],
        spiffe_id: &SpiffeId,
        ttl: Duration,
        dns_names: &[String],
    ) -> Result<SignedSvid, SignError> {
        let started = Instant::now();
        let now = now();
        let earliest = self.cache.id_revoked_before(spiffe_id).unwrap_or(0);
        if earliest > now {
            return Err(SignError::Revoked(spiffe_id.clone()));
        }
        let authorities = self.authorities.current();
        let remaining = authorities.active.not_after().saturating_sub(now);
        let request = SvidRequest {
            spiffe_id: spiffe_id.clone(),
            dns_names: dns_names.to_vec(),
            ip_addresses: Vec::new(),
            ttl: ttl.min(Duration::from_secs(remaining)),
        };
        let signed = authorities
            .active
            .sign_x509_svid_csr_not_before(csr, &request, now, earliest)
            .map_err(SignError::Invalid)?;
        self.metrics.svids_signed.inc();
        self.metrics
            .signing_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(signed)
    }
}
