//! The identity operations on every hot path: parsing a SPIFFE ID, verifying
//! and minting SVIDs, issuing X.509-SVIDs.

use std::hint::black_box;
use std::time::Duration;

use rustls_pki_types::UnixTime;
use zt_ca::{Authority, DEFAULT_CA_TTL, DEFAULT_JWT_SVID_TTL, DEFAULT_X509_SVID_TTL, KeyType, SvidRequest};
use zt_identity::{Purpose, SpiffeId, TrustDomain, verify_jwt_svid, verify_x509_svid};

use crate::{Error, Figure, measure, now};

/// Times `iterations` calls of each operation (issuance at most 2000), on a CA
/// made for the purpose; reports a [`Figure::Calls`] per operation.
pub fn run(iterations: usize, mut report: impl FnMut(Figure)) -> Result<(), Error> {
    let n = iterations.max(1);
    let now = now();
    let ca = Authority::generate(
        TrustDomain::parse("example.org")?,
        KeyType::EcP256,
        DEFAULT_CA_TTL,
        now,
    )?;
    let bundle = ca.bundle()?;
    let id = SpiffeId::parse("spiffe://example.org/ns/production/sa/payment-service")?;
    let request = SvidRequest {
        spiffe_id: id.clone(),
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![],
        ttl: DEFAULT_X509_SVID_TTL,
    };
    let svid = ca.issue_x509_svid(&request, now)?;
    let audience = "spiffe://example.org/billing".to_owned();
    let audiences = vec![audience.clone()];
    let token = ca.mint_jwt_svid(&id, &audiences, DEFAULT_JWT_SVID_TTL, now)?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(now));

    let mut calls = |name: &str, samples| {
        report(Figure::Calls {
            name: name.to_owned(),
            samples,
        });
    };
    calls(
        "parse SPIFFE ID",
        measure(n, || {
            black_box(
                SpiffeId::parse(black_box("spiffe://example.org/ns/production/sa/payment-service")).is_ok(),
            );
        }),
    );
    calls(
        "verify X.509-SVID",
        measure(n, || {
            black_box(verify_x509_svid(&svid.chain, &bundle, at, Purpose::ClientAuth).is_ok());
        }),
    );
    calls(
        "verify JWT-SVID (ES256)",
        measure(n, || {
            black_box(verify_jwt_svid(&token, &bundle, &audience, now).is_ok());
        }),
    );
    calls(
        "mint JWT-SVID (ES256)",
        measure(n, || {
            black_box(
                ca.mint_jwt_svid(&id, &audiences, DEFAULT_JWT_SVID_TTL, now)
                    .is_ok(),
            );
        }),
    );
    calls(
        "issue X.509-SVID (+keygen)",
        measure(n.min(2000), || {
            black_box(ca.issue_x509_svid(&request, now).is_ok());
        }),
    );
    Ok(())
}
