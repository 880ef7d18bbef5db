//! OPA bundles (`.tar.gz` files `zt pdp run` and `zt server --pdp` load) from
//! arbitrary bytes: never panics, stays within its size bounds, and never
//! places a module or data document outside the bundle's own paths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_pdp::data::Loaded;

fuzz_target!(|bytes: &[u8]| {
    let path = std::env::temp_dir().join(format!("zt-fuzz-bundle-{}.tar.gz", std::process::id()));
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    let mut loaded = Loaded::default();
    if loaded.add_file(&path).is_ok() {
        for id in loaded.modules.keys() {
            assert!(!id.contains("/../") && !id.starts_with('/'), "{id}");
        }
    }
    let _ = std::fs::remove_file(&path);
});
