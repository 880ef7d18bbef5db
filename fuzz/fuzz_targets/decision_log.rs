//! Decision-log files (what `zt audit verify|query` and a restarting writer
//! read) from arbitrary bytes: never panics, and a log that verifies has as
//! many records as complete lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = std::env::temp_dir().join(format!("zt-fuzz-decisions-{}.log", std::process::id()));
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    let mut seen = 0u64;
    if let Ok(head) = zt_audit::verify(&path, |_| seen += 1) {
        assert_eq!(head.records, seen);
        let lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
        assert_eq!(seen, lines);
    }
    let _ = std::fs::remove_file(&path);
});
