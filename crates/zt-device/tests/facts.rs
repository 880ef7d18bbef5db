//! The collectors on the machine running the tests: only the shape of what
//! they report is asserted, since any machine may answer differently.

use std::time::{SystemTime, UNIX_EPOCH};

use zt_device::facts::{Collector, Kind, names};

#[test]
fn every_fact_is_reported_on_this_machine_with_its_kind() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let collector = Collector::new(vec!["zt-no-such-process".to_owned()], "0.0.0-test");
    let facts = collector.collect(now);
    assert_eq!(facts.len(), names::ALL.len());
    for name in names::ALL {
        let observed = facts.get(*name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(observed.observed_at, now, "{name}");
        if let Some(value) = &observed.value {
            let kind = Kind::of(name).unwrap();
            assert!(kind.accepts(value), "{name}: {value}");
        }
    }
    // A process that runs nowhere is never reported as running.
    let running = &facts.get(names::PROCESSES).unwrap().value;
    assert_ne!(running, &Some(serde_json::Value::Bool(true)));
    assert_eq!(
        facts.get(names::AGENT_VERSION).unwrap().value,
        Some(serde_json::Value::from("0.0.0-test"))
    );

    let hardware = collector.hardware();
    assert_eq!(
        hardware.get("arch").map(String::as_str),
        Some(std::env::consts::ARCH)
    );
}
