//! JWT-SVID verification of arbitrary tokens against a bundle with no keys: never
//! panics, never verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_identity::{Bundle, TrustDomain, verify_jwt_svid};

fuzz_target!(|token: &str| {
    let Ok(td) = TrustDomain::parse("example.org") else { return };
    assert!(verify_jwt_svid(token, &Bundle::new(td), "audience", 0).is_err());
});
