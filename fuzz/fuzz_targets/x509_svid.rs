//! X.509-SVID verification of an arbitrary DER chain against an empty bundle:
//! never panics, never verifies.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::{CertificateDer, UnixTime};
use zt_identity::{Bundle, Purpose, TrustDomain, verify_x509_svid};

fuzz_target!(|chain: Vec<Vec<u8>>| {
    let Ok(td) = TrustDomain::parse("example.org") else { return };
    let chain: Vec<CertificateDer<'_>> = chain.into_iter().map(CertificateDer::from).collect();
    let now = UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000));
    assert!(verify_x509_svid(&chain, &Bundle::new(td), now, Purpose::ClientAuth).is_err());
    let _ = chain.first().map(zt_identity::x509::summarize);
});
