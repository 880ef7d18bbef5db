//! Inputs to the policy decision point (the `input` of POST /v1/data, the
//! ext_authz request) as arbitrary JSON against the seed's policy and an
//! envoy-style one: never panics, and every answer is a value, undefined, or an
//! error — within the memory limit set for evaluation. `{"format": …, "values": …}`
//! inputs drive sprintf.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use zt_policy::rego::{RegoPolicies, set_memory_limit};

const SEED: &str = include_str!("../../examples/rego/allow.rego");
/// sprintf with the format and values from the input: the bounded sprintf's
/// width scan against regorus's own formatting.
const FORMAT: &str = "package fmt\n\nout := sprintf(input.format, input.values)\n";
const ENVOY: &str = "package envoy.authz\n\ndefault allow := false\n\nallow if {\n\tinput.attributes.request.http.method == \"GET\"\n\tstartswith(input.parsed_path[0], \"pub\")\n}\n\nheaders := {k: v | some k, v in input.attributes.request.http.headers}\n";

fn policies() -> &'static RegoPolicies {
    static POLICIES: OnceLock<RegoPolicies> = OnceLock::new();
    POLICIES.get_or_init(|| {
        set_memory_limit(512 << 20);
        let modules = BTreeMap::from([
            ("allow.rego".to_owned(), SEED.to_owned()),
            ("envoy.rego".to_owned(), ENVOY.to_owned()),
            ("fmt.rego".to_owned(), FORMAT.to_owned()),
        ]);
        match RegoPolicies::compile(modules, serde_json::Value::Null, Duration::from_millis(200)) {
            Ok(policies) => policies,
            Err(e) => panic!("the fuzz policies do not compile: {e:?}"),
        }
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(input) = serde_json::from_slice::<serde_json::Value>(bytes) else { return };
    let policies = policies();
    for path in [
        &["authz", "allow"][..],
        &["envoy", "authz", "allow"],
        &["envoy", "authz"],
        &["fmt", "out"],
        &[],
    ] {
        let _ = policies.query(path, Some(&input));
    }
});
