#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests"
)]

use super::*;
use crate::facts::Observed;

const NOW: u64 = 1_700_000_000_000;

const POLICY: &str = "\
tiers: [trusted, basic, untrusted]
heartbeat:
  window: 6s
  silent_tier: basic
rules:
  - name: firewall
    fact: firewall.active
    equals: true
    max_age: 30s
    required_for: basic
  - name: updates
    fact: updates.security_pending
    at_most: 0
    max_age: 1m
    required_for: trusted
  - name: os
    fact: os.version_id
    version_at_least: \"12.1\"
    max_age: 1h
    required_for: trusted
  - name: os-id
    fact: os.id
    in: [debian, fedora]
    max_age: 1h
    required_for: basic
  - name: kernel-floor
    fact: agent.version
    at_least: 2
    max_age: 1h
    required_for: trusted
  - name: hardware-key
    fact: device.key_type
    equals: tpm
    required_for: trusted
";

fn policy() -> Policy {
    Policy::from_yaml(POLICY, "p.yaml").unwrap()
}

/// Facts observed `age_s` seconds before `NOW`.
fn facts(list: &[(&str, Value, u64)]) -> Facts {
    list.iter()
        .map(|(name, value, age_s)| {
            let observed = Observed {
                value: (!value.is_null()).then(|| value.clone()),
                observed_at: NOW / 1000 - age_s,
            };
            ((*name).to_owned(), observed)
        })
        .collect()
}

fn good() -> Facts {
    facts(&[
        ("firewall.active", Value::Bool(true), 0),
        ("updates.security_pending", 0.into(), 0),
        ("os.version_id", "12.1".into(), 0),
        ("os.id", "debian".into(), 0),
        ("agent.version", 2.into(), 0),
    ])
}

fn attributes(key_type: &str) -> BTreeMap<String, Value> {
    [
        ("device.key_type".to_owned(), Value::from(key_type)),
        ("device.status".to_owned(), Value::from("active")),
    ]
    .into_iter()
    .collect()
}

fn eval(
    policy: &Policy,
    facts: &Facts,
    attributes: &BTreeMap<String, Value>,
    last: Option<u64>,
    now: u64,
) -> Evaluation {
    policy.evaluate(
        &DeviceView {
            facts,
            attributes,
            last_report_ms: last,
        },
        now,
    )
}

fn with(mut facts: Facts, name: &str, value: Value) -> Facts {
    facts.insert(
        name.to_owned(),
        Observed {
            value: (!value.is_null()).then_some(value),
            observed_at: NOW / 1000,
        },
    );
    facts
}

fn error(text: &str) -> String {
    Policy::from_yaml(text, "p.yaml").unwrap_err().to_string()
}

#[test]
fn the_examples_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/devices");
    let policy = Policy::load(&dir.join("compliance.yaml")).unwrap();
    let cases = Cases::load(&dir.join("compliance-cases.yaml")).unwrap();
    assert!(cases.cases.len() >= 8);
    let results = run(&policy, &cases);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.name, r.message))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn accessors() {
    let p = policy();
    assert_eq!(p.tiers(), ["trusted", "basic", "untrusted"]);
    assert_eq!(p.floor(), "untrusted");
    assert_eq!(p.heartbeat_window(), Duration::from_secs(6));
    // The version follows the text: the same policy, the same version; a
    // changed character, another.
    assert_eq!(p.version().len(), 16);
    assert_eq!(p.version(), policy().version());
    let changed = Policy::from_yaml(&POLICY.replace("6s", "7s"), "p.yaml").unwrap();
    assert_ne!(p.version(), changed.version());
}

#[test]
fn a_compliant_device_is_in_the_best_tier() {
    let e = eval(&policy(), &good(), &attributes("tpm"), Some(NOW), NOW);
    assert_eq!(e.tier, "trusted");
    assert!(e.reasons.is_empty(), "{:?}", e.reasons);
}

#[test]
fn each_operator() {
    let p = policy();
    let a = attributes("tpm");
    let cases: &[(&str, Value, &str, &str)] = &[
        (
            "firewall.active",
            false.into(),
            "untrusted",
            "rule firewall: firewall.active is false (want true)",
        ),
        (
            "firewall.active",
            "true".into(),
            "untrusted",
            "rule firewall: firewall.active is unknown (\"true\" is a string, want a bool)",
        ),
        (
            "updates.security_pending",
            3.into(),
            "basic",
            "rule updates: updates.security_pending is 3 (want at most 0)",
        ),
        ("updates.security_pending", 0.0.into(), "trusted", ""),
        (
            "updates.security_pending",
            "0".into(),
            "basic",
            "rule updates: updates.security_pending is unknown (\"0\" is a string, want a number)",
        ),
        (
            "os.version_id",
            "12".into(),
            "basic",
            "rule os: os.version_id is \"12\" (want version 12.1 or later)",
        ),
        ("os.version_id", "12.1.0".into(), "trusted", ""),
        ("os.version_id", "12.10".into(), "trusted", ""),
        ("os.version_id", "13".into(), "trusted", ""),
        (
            "os.version_id",
            "trixie/sid".into(),
            "basic",
            "rule os: os.version_id is unknown (\"trixie/sid\" is not a dotted numeric version)",
        ),
        (
            "os.version_id",
            13.into(),
            "basic",
            "rule os: os.version_id is unknown (13 is a number, want a version string)",
        ),
        ("os.id", "fedora".into(), "trusted", ""),
        (
            "os.id",
            "windows".into(),
            "untrusted",
            "rule os-id: os.id is \"windows\" (want one of [\"debian\", \"fedora\"])",
        ),
        ("os.id", 7.into(), "untrusted", "rule os-id: os.id is unknown"),
        (
            "agent.version",
            1.5.into(),
            "basic",
            "rule kernel-floor: agent.version is 1.5 (want at least 2)",
        ),
        ("agent.version", 2.5.into(), "trusted", ""),
        (
            "firewall.active",
            Value::Null,
            "untrusted",
            "rule firewall: firewall.active is unknown",
        ),
    ];
    for (fact, value, tier, reason) in cases {
        let e = eval(&p, &with(good(), fact, value.clone()), &a, Some(NOW), NOW);
        assert_eq!(e.tier, *tier, "{fact} = {value}: {:?}", e.reasons);
        if reason.is_empty() {
            assert!(e.reasons.is_empty(), "{fact} = {value}: {:?}", e.reasons);
        } else {
            assert_eq!(e.reasons.len(), 1, "{:?}", e.reasons);
            assert!(e.reasons[0].starts_with(reason), "{:?} vs {reason}", e.reasons);
        }
    }
}

#[test]
fn a_missing_fact_is_unknown() {
    let mut f = good();
    f.remove("os.version_id");
    let e = eval(&policy(), &f, &attributes("tpm"), Some(NOW), NOW);
    assert_eq!(e.tier, "basic");
    assert_eq!(e.reasons, ["rule os: os.version_id is unknown"]);
}

#[test]
fn device_attributes_come_from_the_server_only() {
    let p = policy();
    let e = eval(&p, &good(), &attributes("software"), Some(NOW), NOW);
    assert_eq!(e.tier, "basic");
    assert_eq!(
        e.reasons,
        ["rule hardware-key: device.key_type is \"software\" (want \"tpm\")"]
    );
    // A device reporting its own key type is not believed.
    let mut attributes = attributes("tpm");
    attributes.remove("device.key_type");
    let claimed = with(good(), "device.key_type", "tpm".into());
    let e = eval(&p, &claimed, &attributes, Some(NOW), NOW);
    assert_eq!(e.tier, "basic");
    assert_eq!(e.reasons, ["rule hardware-key: device.key_type is unknown"]);
}

#[test]
fn a_failing_rule_caps_below_the_tier_it_guards() {
    let p = policy();
    // Every rule for trusted passes; one for basic fails: untrusted.
    let e = eval(
        &p,
        &with(good(), "firewall.active", false.into()),
        &attributes("tpm"),
        Some(NOW),
        NOW,
    );
    assert_eq!(e.tier, "untrusted");
    // A rule for trusted fails as well: still untrusted, both reasons, in rule order.
    let f = with(
        with(good(), "firewall.active", false.into()),
        "updates.security_pending",
        4.into(),
    );
    let e = eval(&p, &f, &attributes("software"), Some(NOW), NOW);
    assert_eq!(e.tier, "untrusted");
    assert_eq!(e.reasons.len(), 3, "{:?}", e.reasons);
    assert!(e.reasons[0].starts_with("rule firewall:"));
    assert!(e.reasons[1].starts_with("rule updates:"));
    assert!(e.reasons[2].starts_with("rule hardware-key:"));
}

#[test]
fn capping_with_four_tiers() {
    let text = "\
tiers: [a, b, c, d]
heartbeat: {window: 10s, silent_tier: c}
rules:
  - {name: ra, fact: x.a, equals: true, required_for: a}
  - {name: rb, fact: x.b, equals: true, required_for: b}
  - {name: rc, fact: x.c, equals: true, required_for: c}
";
    let p = Policy::from_yaml(text, "four.yaml").unwrap();
    let a = attributes("tpm");
    let tier = |ok: [bool; 3], last: u64| {
        let f = facts(&[
            ("x.a", ok[0].into(), 0),
            ("x.b", ok[1].into(), 0),
            ("x.c", ok[2].into(), 0),
        ]);
        eval(&p, &f, &a, Some(last), NOW).tier
    };
    assert_eq!(tier([true, true, true], NOW), "a");
    assert_eq!(tier([false, true, true], NOW), "b");
    assert_eq!(tier([true, false, true], NOW), "c");
    assert_eq!(tier([false, false, true], NOW), "c");
    assert_eq!(tier([true, true, false], NOW), "d");
    assert_eq!(tier([false, true, false], NOW), "d");
    // Silent: at best c; worse stays worse.
    assert_eq!(tier([true, true, true], NOW - 10_000), "c");
    assert_eq!(tier([true, true, false], NOW - 10_000), "d");
}

#[test]
fn ages() {
    let p = policy();
    let a = attributes("tpm");
    // firewall: max_age 30s. Fresh below it, stale from it on.
    let at = |age_s: u64| {
        let mut f = good();
        f.insert(
            "firewall.active".into(),
            Observed {
                value: Some(true.into()),
                observed_at: NOW / 1000 - age_s,
            },
        );
        eval(&p, &f, &a, Some(NOW), NOW)
    };
    assert_eq!(at(29).tier, "trusted");
    let e = at(30);
    assert_eq!(e.tier, "untrusted");
    assert_eq!(
        e.reasons,
        ["rule firewall: firewall.active observed 30s ago, reaching max_age 30s"]
    );
    let e = at(45);
    assert_eq!(
        e.reasons,
        ["rule firewall: firewall.active observed 45s ago, older than max_age 30s"]
    );
}

#[test]
fn max_age_defaults_to_the_heartbeat_window() {
    let text = "\
tiers: [ok, no]
heartbeat: {window: 6s, silent_tier: ok}
rules:
  - {name: fw, fact: firewall.active, equals: true, required_for: ok}
";
    let p = Policy::from_yaml(text, "d.yaml").unwrap();
    let a = attributes("tpm");
    let f = facts(&[("firewall.active", true.into(), 5)]);
    assert_eq!(eval(&p, &f, &a, Some(NOW), NOW).tier, "ok");
    let f = facts(&[("firewall.active", true.into(), 6)]);
    let e = eval(&p, &f, &a, Some(NOW), NOW);
    assert_eq!(e.tier, "no");
    assert_eq!(
        e.reasons,
        ["rule fw: firewall.active observed 6s ago, reaching max_age 6s"]
    );
}

#[test]
fn future_facts() {
    let p = policy();
    let a = attributes("tpm");
    let ahead = |s: u64| {
        let mut f = good();
        f.insert(
            "firewall.active".into(),
            Observed {
                value: Some(true.into()),
                observed_at: NOW / 1000 + s,
            },
        );
        eval(&p, &f, &a, Some(NOW), NOW)
    };
    // Within the 5 s skew: fine, and fresh until observed_at + max_age.
    let e = ahead(5);
    assert_eq!(e.tier, "trusted");
    let e = ahead(6);
    assert_eq!(e.tier, "untrusted");
    assert_eq!(
        e.reasons,
        ["rule firewall: firewall.active observed 6s in the future"]
    );
    // It comes within the skew at observed_at - 5s, before the heartbeat runs out.
    assert_eq!(e.changes_at_ms, Some(NOW + 1_000));
}

#[test]
fn silence() {
    let p = policy();
    let a = attributes("tpm");
    let e = eval(&p, &good(), &a, Some(NOW - 5_999), NOW);
    assert_eq!(e.tier, "trusted");
    let e = eval(&p, &good(), &a, Some(NOW - 6_000), NOW);
    assert_eq!(e.tier, "basic");
    assert_eq!(e.reasons, ["silent: no report for 6s (heartbeat window 6s)"]);
    let e = eval(&p, &good(), &a, Some(NOW - 7_250), NOW);
    assert_eq!(e.reasons, ["silent: no report for 7.2s (heartbeat window 6s)"]);
    // Silence does not lift a device: untrusted stays untrusted.
    let f = with(good(), "firewall.active", false.into());
    let e = eval(&p, &f, &a, Some(NOW - 60_000), NOW);
    assert_eq!(e.tier, "untrusted");
    assert_eq!(e.reasons.len(), 2);
    assert_eq!(e.reasons[1], "silent: no report for 1m (heartbeat window 6s)");
}

#[test]
fn never_reported_and_not_active_are_the_floor() {
    let p = policy();
    let e = eval(&p, &good(), &attributes("tpm"), None, NOW);
    assert_eq!(e.tier, "untrusted");
    assert_eq!(e.reasons, ["never reported"]);
    assert_eq!(e.changes_at_ms, None);

    let mut revoked = attributes("tpm");
    revoked.insert("device.status".into(), "revoked".into());
    let e = eval(&p, &good(), &revoked, Some(NOW), NOW);
    assert_eq!(e.tier, "untrusted");
    assert_eq!(e.reasons, ["device.status is revoked (want active)"]);
    assert_eq!(e.changes_at_ms, None);

    let mut unknown = attributes("tpm");
    unknown.remove("device.status");
    let e = eval(&p, &good(), &unknown, Some(NOW), NOW);
    assert_eq!(e.tier, "untrusted");
    assert_eq!(e.reasons, ["device.status is unknown (want active)"]);
}

#[test]
fn changes_at() {
    let text = "\
tiers: [trusted, basic, untrusted]
heartbeat: {window: 6s, silent_tier: basic}
rules:
  - {name: fw, fact: firewall.active, equals: true, max_age: 30s, required_for: trusted}
  - {name: disk, fact: disk.root_encrypted, equals: true, max_age: 1h, required_for: basic}
";
    let p = Policy::from_yaml(text, "c.yaml").unwrap();
    let a = attributes("tpm");
    let t0 = NOW - 2_000;
    let fresh = |fw_age: u64, fw: bool| {
        facts(&[
            ("firewall.active", fw.into(), fw_age),
            ("disk.root_encrypted", true.into(), 0),
        ])
    };
    // The passing firewall fact observed at t0 reaches max_age at t0 + 30s, but
    // the heartbeat runs out first.
    let e = eval(&p, &fresh(2, true), &a, Some(NOW), NOW);
    assert_eq!(e.changes_at_ms, Some(NOW + 6_000));
    // Reported long enough ago that the fact expires first.
    let e = eval(
        &p,
        &fresh(2, true),
        &a,
        Some(t0 + 29_000 - 6_000 + 2_000),
        t0 + 29_000,
    );
    assert_eq!(e.tier, "trusted");
    assert_eq!(e.changes_at_ms, Some(t0 + 30_000));
    // Silent already: the next change is the fact's.
    let e = eval(&p, &fresh(2, true), &a, Some(t0 - 10_000), NOW);
    assert_eq!(e.tier, "basic");
    assert_eq!(e.changes_at_ms, Some(t0 + 30_000));
    // A failing fact going stale changes nothing; the disk fact's hour is next.
    let e = eval(&p, &fresh(2, false), &a, Some(t0 - 10_000), NOW);
    assert_eq!(e.changes_at_ms, Some(NOW + 3_600_000));
    // Evaluated at changes_at, the result did change.
    let e = eval(&p, &fresh(2, true), &a, Some(t0 - 10_000), t0 + 30_000);
    assert_eq!(e.tier, "basic");
    assert!(e.reasons[0].starts_with("rule fw:"), "{:?}", e.reasons);
    // Device attributes never expire; nothing left to change.
    let only_key = "\
tiers: [trusted, untrusted]
heartbeat: {window: 6s, silent_tier: untrusted}
rules:
  - {name: key, fact: device.key_type, equals: tpm, required_for: trusted}
";
    let p = Policy::from_yaml(only_key, "k.yaml").unwrap();
    let e = eval(&p, &Facts::new(), &a, Some(NOW - 7_000), NOW);
    assert_eq!(e.tier, "untrusted");
    assert_eq!(e.changes_at_ms, None);
}

#[test]
fn errors_name_the_file_the_line_and_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    equal: true\n    required_for: a\n",
            "p.yaml:6: rules[0]: unknown field `equal`",
        ),
        (
            "tiers: [a]\nheartbeat: {window: 6s, silent_tier: a}\n",
            "p.yaml:1: tiers: 1 given, at least 2 needed",
        ),
        (
            "tiers: [a, a]\nheartbeat: {window: 6s, silent_tier: a}\n",
            "p.yaml:1: tiers: \"a\" appears twice",
        ),
        (
            "tiers: [a, b]\nheartbeat:\n  window: 6x\n  silent_tier: a\n",
            "p.yaml:3: heartbeat.window: invalid duration \"6x\"",
        ),
        (
            "tiers: [a, b]\nheartbeat:\n  window: 6s\n  silent_tier: c\n",
            "p.yaml:4: heartbeat.silent_tier: \"c\" is not a tier (tiers: a, b)",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    equals: true\n    required_for: trustd\n",
            "p.yaml:7: rules[0].required_for: \"trustd\" is not a tier (tiers: a, b)",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    equals: true\n    required_for: b\n",
            "p.yaml:7: rules[0].required_for: \"b\" is the floor",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    equals: true\n    required_for: a\n  - name: x\n    fact: g\n    equals: true\n    required_for: a\n",
            "p.yaml:8: rules[1].name: \"x\" names two rules",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: \"\"\n    equals: true\n    required_for: a\n",
            "p.yaml:5: rules[0].fact: empty (rule x)",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    required_for: a\n",
            "p.yaml:4: rules[0]: rule x needs exactly one of equals",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    equals: 1\n    at_most: 2\n    required_for: a\n",
            "p.yaml:4: rules[0]: rule x needs exactly one of equals",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    version_at_least: \"12.x\"\n    required_for: a\n",
            "p.yaml:6: rules[0].version_at_least: \"12.x\" is not a dotted numeric version",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    at_most: many\n    required_for: a\n",
            "p.yaml:6: rules[0].at_most: invalid type",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    equals: null\n    required_for: a\n",
            "p.yaml:6: rules[0].equals: null",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    in: []\n    required_for: a\n",
            "p.yaml:6: rules[0].in: must list values",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    equals: true\n    max_age: 30\n    required_for: a\n",
            "p.yaml:7: rules[0].max_age: invalid duration \"30\"",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 6s, silent_tier: a}\nextra: 1\n",
            "p.yaml:3: unknown field `extra`",
        ),
        ("tiers: [a, b]\n", "p.yaml:1: missing field `heartbeat`"),
        (
            "tiers: [a, b, c]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - {name: x, fact: f, equals: 1, required_for: a}\n  - {name: y, fact: f, equals: 1, required_for: a}\n  - {name: z, fact: f, equals: 1, required_for: d}  # name: q\n",
            "p.yaml:6: rules[2].required_for: \"d\" is not a tier",
        ),
        (
            "tiers: [a, b, c]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    equals: 1\n    required_for: d\n  - name: y\n    fact: f\n    equals: 1\n    max_age: 0s\n    required_for: d\n",
            "p.yaml:7: rules[0].required_for",
        ),
        (
            "tiers: [a, b, c]\nheartbeat: {window: 6s, silent_tier: a}\nrules:\n  - name: x\n    fact: f\n    equals: 1\n    required_for: a\n  - name: y\n    fact: f\n    equals: 1\n    max_age: 0s\n    required_for: a\n",
            "p.yaml:11: rules[1].max_age: must be longer than 0",
        ),
        (
            "tiers: [a, b]\nheartbeat: {window: 0s, silent_tier: a}\n",
            "p.yaml:2: heartbeat.window: must be longer than 0",
        ),
        ("tiers: [a, b\n", "p.yaml:"),
    ];
    for (text, want) in cases {
        let got = error(text);
        assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        // Only the YAML parser's own messages may say where else they looked.
        assert!(want.len() < 10 || !got.contains(" at line "), "{got}");
    }
}

#[test]
fn load_names_a_missing_file() {
    let e = Policy::load(Path::new("/nonexistent/compliance.yaml")).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/compliance.yaml: "), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("6s"), Some(Duration::from_secs(6)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    for bad in ["", "s", "6", "6 s", "-1s", "1.5s", "6d", "99999999999999999999s"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
    assert_eq!(show_ms(7_250), "7.2s");
    assert_eq!(show_ms(500), "500ms");
    assert_eq!(show_ms(90_000), "90s");
    assert_eq!(show_ms(3_600_000), "1h");
}

#[test]
fn case_errors_and_failures() {
    let e = Cases::from_yaml(
        "cases:\n  - name: x\n    expect: a\n    last_report: soon\n",
        "c.yaml",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("c.yaml:4: cases[0].last_report: invalid last_report \"soon\""),
        "{e}"
    );
    let e = Cases::from_yaml(
        "cases:\n  - name: x\n    expect: a\n    ages: {f: 500ms}\n    facts: {f: 1}\n",
        "c.yaml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("not whole seconds"), "{e}");
    let e = Cases::from_yaml(
        "cases:\n  - name: x\n    expect: a\n    ages: {g: 5s}\n",
        "c.yaml",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "c.yaml:2: cases[0].ages: g is not in facts (case \"x\")"
    );
    let e = Cases::from_yaml("cases:\n  - name: x\n    expected: a\n", "c.yaml").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("c.yaml:3: cases[0]: unknown field `expected`"),
        "{e}"
    );

    let text = "\
cases:
  - name: wrong tier
    facts: {firewall.active: false}
    expect: trusted
  - name: missing reason
    last_report: never
    expect: untrusted
    reasons: [firewall]
  - name: no such tier
    expect: gold
";
    let results = run(&policy(), &Cases::from_yaml(text, "c.yaml").unwrap());
    assert!(results.iter().all(|r| !r.passed));
    assert!(
        results[0].message.starts_with("got untrusted, want trusted"),
        "{}",
        results[0].message
    );
    assert_eq!(
        results[1].message,
        "no reason contains \"firewall\" (reasons: never reported)"
    );
    assert!(
        results[2].message.starts_with("expect: \"gold\" is not a tier"),
        "{}",
        results[2].message
    );
}

#[test]
fn caep_event_is_a_set() {
    let reasons = vec!["rule firewall: firewall.active is false (want true)".to_owned()];
    let set = caep_event(
        "https://zt.example",
        "dev-42",
        "spiffe://example.org/device/dev-42",
        "trusted",
        "untrusted",
        "untrusted",
        &reasons,
        1_700_000_000,
    );
    assert_eq!(set["iss"], "https://zt.example");
    assert_eq!(set["iat"], 1_700_000_000);
    let jti = set["jti"].as_str().unwrap();
    assert_eq!(jti.len(), 32);
    assert!(jti.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(set["sub_id"]["format"], "complex");
    assert_eq!(
        set["sub_id"]["device"],
        serde_json::json!({"format": "opaque", "id": "dev-42"})
    );
    let event = &set["events"][CAEP_DEVICE_COMPLIANCE_CHANGE];
    assert_eq!(event["previous_status"], "compliant");
    assert_eq!(event["current_status"], "not-compliant");
    assert_eq!(event["event_timestamp"], 1_700_000_000);
    assert_eq!(event["zt_previous_tier"], "trusted");
    assert_eq!(event["zt_current_tier"], "untrusted");
    assert_eq!(event["zt_spiffe_id"], "spiffe://example.org/device/dev-42");
    assert!(
        event["reason_admin"]["en"]
            .as_str()
            .unwrap()
            .contains("rule firewall")
    );
    assert!(event["reason_user"]["en"].is_string());
    // Two tiers above the floor are both compliant; jti differs per event.
    let other = caep_event("i", "d", "s", "trusted", "basic", "untrusted", &[], 1);
    let event = &other["events"][CAEP_DEVICE_COMPLIANCE_CHANGE];
    assert_eq!(event["previous_status"], "compliant");
    assert_eq!(event["current_status"], "compliant");
    assert_ne!(other["jti"], set["jti"]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_text_is_read_or_refused_without_panicking(text in "\\PC{0,200}") {
            let _ = Policy::from_yaml(&text, "p.yaml");
            let _ = Cases::from_yaml(&text, "c.yaml");
        }

        #[test]
        fn durations_read_what_they_show(ms in 0u64..10_000_000_000) {
            let shown = show_ms(ms);
            if let Some(read) = parse_duration(&shown) {
                prop_assert_eq!(millis(read), ms);
            } else {
                // Only fractional seconds are shown in a form not read back.
                prop_assert!(shown.contains('.'));
            }
        }

        /// Nothing changes before `changes_at_ms`, and something has by then.
        #[test]
        fn changes_at_is_exact(
            ages in proptest::collection::vec(0u64..120, 5),
            firewall in any::<bool>(),
            last_ago in 0u64..20_000,
            later in 0u64..200_000,
        ) {
            let p = policy();
            let a = attributes("tpm");
            let f = facts(&[
                ("firewall.active", firewall.into(), ages[0]),
                ("updates.security_pending", 0.into(), ages[1]),
                ("os.version_id", "12.1".into(), ages[2]),
                ("os.id", "debian".into(), ages[3]),
                ("agent.version", 2.into(), ages[4]),
            ]);
            let last = Some(NOW - last_ago);
            let rules = |e: &Evaluation| -> Vec<String> {
                e.reasons.iter().map(|r| r.split(':').next().unwrap_or("").to_owned()).collect()
            };
            let now = eval(&p, &f, &a, last, NOW);
            let then = eval(&p, &f, &a, last, NOW + later);
            match now.changes_at_ms {
                Some(at) if NOW + later >= at => {
                    prop_assert!(at > NOW);
                    let before = eval(&p, &f, &a, last, at - 1);
                    let after = eval(&p, &f, &a, last, at);
                    prop_assert_eq!((&before.tier, rules(&before)), (&now.tier, rules(&now)));
                    prop_assert_ne!((&after.tier, rules(&after)), (&now.tier, rules(&now)));
                }
                _ => prop_assert_eq!((&then.tier, rules(&then)), (&now.tier, rules(&now))),
            }
        }
    }
}
