//! `zt policy generate`'s path templates and `zt policy promote`'s edit, from
//! arbitrary paths (as decision logs carry them) and text: never panics; every
//! path a policy may carry is covered by the template made of it, before and
//! after crowded prefixes collapse into `{**}`; a promoted document has one
//! dry-run annotation line fewer.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use zt_observe::paths::{PathUse, Templating, collapse, template, unusable};
use zt_policy::matching::PathMatch;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let templating = Templating {
        collapse_after: 2 + usize::from(bytes.first().copied().unwrap_or(0) % 4),
        token_min_length: 8 + usize::from(bytes.last().copied().unwrap_or(0) % 16),
    };
    let mut observed = Vec::new();
    let mut templates: BTreeMap<String, PathUse> = BTreeMap::new();
    for path in text.split('\n') {
        if unusable(path).is_some() {
            continue;
        }
        let templated = template(path, &templating);
        let pattern = PathMatch::parse(&templated).unwrap_or_else(|e| panic!("{templated:?} from {path:?}: {e}"));
        assert!(pattern.matches(path), "{templated:?} does not cover {path:?}");
        observed.push(path.to_owned());
        templates.entry(templated).or_default().count += 1;
    }
    let collapsed = collapse(templates, templating.collapse_after);
    let patterns: Vec<PathMatch> = collapsed
        .keys()
        .map(|t| PathMatch::parse(t).unwrap_or_else(|e| panic!("collapsed {t:?}: {e}")))
        .collect();
    for path in &observed {
        assert!(patterns.iter().any(|p| p.matches(path)), "nothing covers {path:?} in {:?}", collapsed.keys());
    }
    assert!(!collapsed.contains_key("/{**}"), "the root is never collapsed");

    let line = usize::from(bytes.first().copied().unwrap_or(1));
    if let Ok(promoted) = zt_observe::promote::remove_dry_run(text, line) {
        let count = |t: &str| t.lines().filter(|l| l.contains("istio.io/dry-run")).count();
        assert_eq!(count(&promoted) + 1, count(text));
    }
});
