//! Bundle parsing (JWKS or PEM) of arbitrary bytes: never panics, and a bundle it
//! accepts survives a JWKS round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_identity::{Bundle, TrustDomain};

fuzz_target!(|bytes: &[u8]| {
    let Ok(td) = TrustDomain::parse("example.org") else { return };
    if let Ok(bundle) = Bundle::parse(bytes, Some(td.clone())) {
        if let Ok(jwks) = bundle.to_jwks() {
            let again = Bundle::parse_jwks(td, jwks.as_bytes()).map(|b| b.x509_authorities().len());
            assert_eq!(again.ok(), Some(bundle.x509_authorities().len()));
        }
    }
});
