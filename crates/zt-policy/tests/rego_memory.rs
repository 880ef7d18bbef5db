//! Rego memory bombs stop at the memory limit with an error, and the same
//! policies answer the next query. The limit is process-wide, so these tests
//! live in a test binary of their own (a bomb at the limit would fail the
//! unit tests running beside it) and take turns.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use zt_policy::rego::{RegoPolicies, set_memory_limit};

/// Low, so that every bomb trips it within a fraction of a second even in a
/// debug build.
const LIMIT: u64 = 64 << 20;

/// One bomb at a time: each fills the process up to the limit.
static TURN: Mutex<()> = Mutex::new(());

/// `module` (package `bomb`) under [`LIMIT`], with a time limit far above what
/// a bomb needs, so that only the memory limit can stop it.
fn bounded(module: &str) -> RegoPolicies {
    set_memory_limit(LIMIT);
    RegoPolicies::compile(
        [(
            "bomb.rego".to_owned(),
            format!("package bomb\n{module}\nok := 1\n"),
        )]
        .into(),
        Value::Null,
        Duration::from_secs(300),
    )
    .unwrap()
}

/// Each rule fails for the memory limit, and `ok` answers right after.
fn each_stops_at_the_limit(policies: &RegoPolicies, rules: &[&str], input: Option<&Value>) {
    for rule in rules {
        let error = policies.query(&["bomb", rule], input).unwrap_err().to_string();
        assert!(error.contains("exceeded memory limit"), "{rule}: {error}");
        assert_eq!(
            policies.query(&["bomb", "ok"], input).unwrap(),
            Some(json!(1)),
            "{rule}"
        );
    }
}

/// 64 KiB: the payload each iteration copies.
fn pad() -> Value {
    json!({"pad": "x".repeat(64 << 10)})
}

#[test]
fn rego_memory_bomb_comprehensions_over_ranges() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let policies = bounded(
        "array := count([concat(\"\", [input.pad, format_int(i, 10)]) | some i in numbers.range(1, 100000)])\n\
         set := count({concat(\"\", [input.pad, format_int(i, 10)]) | some i in numbers.range(1, 100000)})\n\
         object := count({format_int(i, 10): concat(\"\", [input.pad, format_int(i, 10)]) | some i in numbers.range(1, 100000)})\n\
         row(i) := [concat(\"\", [input.pad, format_int(i, 10), format_int(j, 10)]) | some j in numbers.range(1, 100)]\n\
         nested := count([row(i) | some i in numbers.range(1, 100000)])\n\
         stepped := count([concat(\"\", [input.pad, format_int(i, 10)]) | some i in numbers.range_step(1, 10000000, 7)])\n",
    );
    each_stops_at_the_limit(
        &policies,
        &["array", "set", "object", "nested", "stepped"],
        Some(&pad()),
    );
}

#[test]
fn rego_memory_bomb_string_doubling_in_a_chain_of_rules() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // From 64 KiB, 30 doublings ask for 64 TiB.
    let mut module = String::from("c0 := input.pad\ns0 := input.pad\nr0 := input.pad\n");
    for i in 1..=30 {
        let p = i - 1;
        module.push_str(&format!(
            "c{i} := concat(\"\", [c{p}, c{p}])\n\
             s{i} := sprintf(\"%s%s\", [s{p}, s{p}])\n\
             r{i} := strings.replace_n({{\"x\": \"xx\"}}, r{p})\n"
        ));
    }
    let policies = bounded(&module);
    each_stops_at_the_limit(&policies, &["c30", "s30", "r30"], Some(&pad()));
}

#[test]
fn rego_memory_bomb_nested_comprehensions_in_a_chain_of_rules() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // Each level doubles every string of the one below and its count: the
    // comprehensions nest through the rules.
    let mut module = String::from("d0 := [input.pad]\n");
    for i in 1..=30 {
        let p = i - 1;
        module.push_str(&format!(
            "d{i} := [concat(\"\", [x, y]) | some x in d{p}; some y in [\"a\", \"b\"]]\n"
        ));
    }
    module.push_str("arrays := count(array.concat(d30, d30))\n");
    let policies = bounded(&module);
    each_stops_at_the_limit(&policies, &["d30", "arrays"], Some(&pad()));
}

#[test]
fn rego_memory_bomb_large_input() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let policies = bounded("size := count(input.items)\n");
    // Under the limit: answered.
    let small = json!({"items": vec!["x".repeat(1 << 10); 1 << 10]});
    assert_eq!(
        policies.query(&["bomb", "size"], Some(&small)).unwrap(),
        Some(json!(1 << 10))
    );
    // Over it (about 96 MiB as JSON, more as values): refused, then answered again.
    let large = json!({"items": vec!["x".repeat(1 << 10); 96 << 10]});
    let error = policies
        .query(&["bomb", "size"], Some(&large))
        .unwrap_err()
        .to_string();
    drop(large);
    assert!(error.contains("exceeded memory limit"), "{error}");
    assert_eq!(
        policies.query(&["bomb", "size"], Some(&small)).unwrap(),
        Some(json!(1 << 10))
    );
}

#[test]
fn rego_memory_bomb_time_limit_still_applies() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    set_memory_limit(LIMIT);
    // Much work, little memory: the time limit stops it.
    let policies = RegoPolicies::compile(
        [(
            "slow.rego".to_owned(),
            "package slow\nn := count([1 | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); i == j + 1000000])\n"
                .to_owned(),
        )]
        .into(),
        Value::Null,
        Duration::from_millis(200),
    )
    .unwrap();
    let error = policies.query(&["slow", "n"], None).unwrap_err().to_string();
    assert!(error.contains("exceeded time limit"), "{error}");
}
