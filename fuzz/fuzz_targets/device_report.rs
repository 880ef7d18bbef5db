//! Posture reports and compliance policies from arbitrary bytes: decoding a
//! signed report (every `typ` the device API takes) and reading its claims
//! never panic; a policy that loads evaluates any report's facts without
//! panicking and always to one of its own tiers.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use zt_device::compliance::{DeviceView, Policy};
use zt_device::report::{self, CERTIFICATE_TYPE, ENROLL_TYPE, REPORT_TYPE, Report};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    for typ in [REPORT_TYPE, ENROLL_TYPE, CERTIFICATE_TYPE] {
        if let Ok(jws) = report::decode(text, typ) {
            let _ = Report::from_claims(jws.claims);
        }
    }
    if let Ok(policy) = Policy::from_yaml(text, "fuzz.yaml") {
        let facts = BTreeMap::new();
        let attributes = BTreeMap::new();
        let view = DeviceView { facts: &facts, attributes: &attributes, last_report_ms: Some(0) };
        let evaluation = policy.evaluate(&view, 1_000);
        assert!(policy.tiers().contains(&evaluation.tier));
    }
});
