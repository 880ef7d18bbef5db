//! The bytes a workload sends on the Workload API socket, as zt agent's relay
//! reads them (HTTP/2 frames, HPACK header blocks re-encoded to fix
//! `:authority`): never panics, and whatever it forwards is bounded by what it
//! read plus the re-encoding of bounded header blocks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else { return };
    let mut from = bytes;
    let mut to = Vec::new();
    let _ = runtime.block_on(zt_agent::uds::rewrite_headers(&mut from, &mut to));
    // 24 bytes of preface, then frames of at most 16 KiB whose header blocks
    // (at most 64 KiB decoded) are re-encoded literally.
    assert!(to.len() <= bytes.len() * 4 + 128 * 1024, "{} from {}", to.len(), bytes.len());
});
