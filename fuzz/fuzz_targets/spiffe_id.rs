//! SPIFFE ID parsing: never panics, and what it accepts it prints back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_identity::{SpiffeId, TrustDomain};

fuzz_target!(|input: &str| {
    if let Ok(id) = SpiffeId::parse(input) {
        assert_eq!(id.to_string(), input);
    }
    let _ = TrustDomain::parse(input);
});
