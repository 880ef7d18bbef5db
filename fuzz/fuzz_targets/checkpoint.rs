//! Signed notes, checkpoints, verifier keys and cosignatures (what `zt audit
//! verify` reads from `LOG.checkpoints`, `LOG.cosigned`, `--key` and
//! `--witness-key`, and what zt server reads from every shipment) from arbitrary
//! text: never panics, a checkpoint it accepts survives a round trip, and a key
//! it accepts verifies nothing it did not sign.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_audit::cosignature::CosignatureVerifier;
use zt_audit::note::{Checkpoint, Note, VerifierKey};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if let Ok(note) = Note::parse(text) {
        if let Ok(checkpoint) = Checkpoint::parse(note.text) {
            let again = Checkpoint::parse(&checkpoint.text()).ok();
            assert_eq!(again.as_ref(), Some(&checkpoint));
        }
    }
    if let Some((key, note)) = text.split_once('\n') {
        if let Ok(key) = VerifierKey::parse(key) {
            assert_eq!(VerifierKey::parse(&key.to_string()).ok().as_ref(), Some(&key));
            let _ = key.verify(note);
        }
        if let Ok(key) = CosignatureVerifier::parse(key) {
            assert_eq!(CosignatureVerifier::parse(&key.to_string()).ok().as_ref(), Some(&key));
            let _ = key.verify(note);
        }
    }
});
