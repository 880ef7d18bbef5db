//! Istio AuthorizationPolicy and PeerAuthentication YAML (what `zt policy lint|apply` and `zt proxy
//! --policy-dir` read) from arbitrary text: never panics, and every problem it
//! reports names the file and a line that exists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_policy::load::{Source, parse};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let source = Source {
        name: "fuzz.yaml".into(),
        text: text.to_owned(),
    };
    if let Err(e) = parse(&[source]) {
        // Lines as YAML counts them: a lone CR ends a line too.
        let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 1;
        for problem in &e.problems {
            let line: usize = problem
                .strip_prefix("fuzz.yaml:")
                .and_then(|rest| rest.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no file:line in {problem:?}"));
            assert!((1..=lines).contains(&line), "line {line} of {lines}: {problem}");
        }
    }
});
