//! Request targets and authorities as zt proxy normalizes them before any
//! policy sees them: never panics, and normalizing again changes nothing (what
//! the policy decided on is what the app receives, and the policy engine's own
//! normalization agrees).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_policy::normalize::{PathParams, authority, host, target, target_with};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(normalized) = authority(bytes) {
        assert_eq!(authority(normalized.as_bytes()).as_deref(), Ok(normalized.as_str()));
        assert_eq!(host(&normalized), normalized);
    }
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    for params in [PathParams::Reject, PathParams::Strip] {
        if let Ok(once) = target_with(text, params) {
            let again = target(&once.path_and_query()).map(|t| t.path);
            assert_eq!(again.as_deref(), Ok(once.path.as_str()), "{text:?}");
            assert!(!once.path.contains(';') || params == PathParams::Reject);
        }
    }
});
