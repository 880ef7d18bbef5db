//! End-to-end tests of `zt server`: each starts real server processes (SQLite in
//! a temporary data directory, or a fresh PostgreSQL database) and drives them
//! with the real `zt entry …` and `zt agent token create` commands, raw HTTP on
//! the admin socket and the health port, SIGTERM and SIGKILL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::fs;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use zt_identity::Purpose;
use zt_testkit::describe;

/// The seed's registration, written for SPIRE, run as `zt entry create`.
const SEED_CREATE: &[&str] = &[
    "entry",
    "create",
    "-spiffeID",
    "spiffe://example.org/payment",
    "-parentID",
    "spiffe://example.org/k8s-node",
    "-selector",
    "k8s:ns:production",
    "-selector",
    "k8s:sa:payment-service",
    "-ttl",
    "3600",
];

/// Create, show, count, node alias, update, delete: the whole life of an entry,
/// on a server with an empty datastore.
fn entry_lifecycle(server: &ServerProcess) {
    assert_eq!(count(server), 0);

    let text = ok(server, SEED_CREATE);
    for needle in [
        "Entry ID",
        "spiffe://example.org/payment",
        "spiffe://example.org/k8s-node",
        "k8s:ns:production",
        "k8s:sa:payment-service",
        "X509-SVID TTL    : 3600",
        "Revision         : 1",
    ] {
        assert!(text.contains(needle), "create output lacks {needle:?}:\n{text}");
    }
    let id = text
        .lines()
        .find_map(|line| line.strip_prefix("Entry ID         : "))
        .unwrap_or_else(|| panic!("no Entry ID line:\n{text}"))
        .to_owned();
    assert!(!id.is_empty(), "{text}");

    let shown = show_json(server, &["--spiffe-id", "spiffe://example.org/payment"]);
    assert_eq!(shown.len(), 1, "{shown:?}");
    let entry = shown[0].clone();
    assert_eq!(entry["id"], id.as_str(), "{entry}");
    assert_eq!(entry["revision"], 1, "{entry}");
    assert_eq!(entry["spiffe_id"], "spiffe://example.org/payment", "{entry}");
    assert_eq!(entry["parent_id"], "spiffe://example.org/k8s-node", "{entry}");
    assert_eq!(
        entry["selectors"],
        serde_json::json!(["k8s:ns:production", "k8s:sa:payment-service"]),
        "{entry}"
    );
    assert_eq!(entry["x509_ttl"], 3600, "{entry}");
    assert_eq!(entry["jwt_ttl"], 300, "{entry}");
    assert_eq!(entry["node"], false, "{entry}");
    assert_eq!(
        ok(server, &["entry", "count"]),
        "1 registration entries\n",
        "zt entry count"
    );
    assert_eq!(
        show_json(server, &["--entry-id", &id]),
        vec![entry.clone()],
        "show --entry-id and show --spiffe-id disagree"
    );

    // A node alias, SPIRE style: its parent is the server itself.
    let alias = one_entry_json(
        server,
        &[
            "entry",
            "create",
            "-spiffeID",
            "spiffe://example.org/k8s-node",
            "-selector",
            "k8s:cluster:prod",
            "-node",
        ],
    );
    assert_eq!(alias["parent_id"], "spiffe://example.org/zt/server", "{alias}");
    assert_eq!(alias["node"], true, "{alias}");
    assert_eq!(alias["revision"], 1, "{alias}");
    assert_eq!(count(server), 2);
    assert_eq!(
        show_json(server, &["--parent-id", "spiffe://example.org/k8s-node"]),
        vec![entry.clone()],
        "show --parent-id"
    );

    // Update one field: the revision moves on, the other fields stay.
    let updated = one_entry_json(
        server,
        &["entry", "update", "--entry-id", &id, "--x509-ttl", "600"],
    );
    let mut expected = entry.clone();
    expected["x509_ttl"] = 600.into();
    expected["revision"] = 2.into();
    expected["updated_at"] = updated["updated_at"].clone();
    assert_eq!(updated, expected, "update changed more than --x509-ttl");
    assert_eq!(show_json(server, &["--entry-id", &id]), vec![updated.clone()]);

    // Delete: gone, and said so in one line.
    let text = ok(server, &["entry", "delete", "--entry-id", &id]);
    assert_eq!(
        text,
        format!("deleted entry {id} (spiffe://example.org/payment)\n")
    );
    let out = zt(server, &["entry", "show", "--entry-id", &id]);
    assert_failure(&out, 1, &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("zt: entry \"{id}\" not found\n"),
        "{}",
        describe(&out)
    );
    assert_eq!(count(server), 1);
    assert_eq!(show_json(server, &[]), vec![alias]);
}

#[test]
fn sqlite_entry_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), None);
    entry_lifecycle(&server);
    assert!(
        tmp.path().join("data/datastore.sqlite3").exists(),
        "no SQLite file in the data directory"
    );
}

#[test]
fn postgres_entry_lifecycle() {
    let Some(url) = postgres_database("postgres_entry_lifecycle") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), Some(&url));
    entry_lifecycle(&server);
    assert!(
        !tmp.path().join("data/datastore.sqlite3").exists(),
        "a SQLite file next to a PostgreSQL datastore"
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), None);
    let id = one_entry_json(&server, SEED_CREATE)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(count(&server), 1);

    let create = |extra: &[&str]| {
        let mut args = vec!["entry", "create"];
        args.extend_from_slice(extra);
        zt(&server, &args)
    };
    let refused = |out: Output, code: i32, needles: &[&str]| {
        assert_failure(&out, code, needles);
        assert_eq!(count(&server), 1, "count changed after {needles:?}");
    };

    refused(
        zt(&server, SEED_CREATE),
        1,
        &["already exists", "spiffe://example.org/payment"],
    );
    refused(
        create(&[
            "--spiffe-id",
            "spiffe://example.org/x",
            "--parent-id",
            "spiffe://example.org/node",
            "--selector",
            "Bad:x",
        ]),
        2,
        &["Bad:x", "--selector"],
    );
    refused(
        create(&[
            "--spiffe-id",
            "https://example.org/x",
            "--parent-id",
            "spiffe://example.org/node",
            "--selector",
            "k8s:ns:x",
        ]),
        2,
        &["https://example.org/x", "--spiffe-id"],
    );
    refused(
        create(&[
            "--spiffe-id",
            "spiffe://other.org/x",
            "--parent-id",
            "spiffe://other.org/node",
            "--selector",
            "k8s:ns:x",
        ]),
        1,
        &["spiffe://other.org/x", "trust domain"],
    );
    let missing = "0123456789abcdef0123456789abcdef";
    refused(
        zt(
            &server,
            &["entry", "update", "--entry-id", missing, "--x509-ttl", "60"],
        ),
        1,
        &[missing, "not found"],
    );
    refused(
        zt(&server, &["entry", "delete", "--entry-id", missing]),
        1,
        &[missing, "not found"],
    );
    refused(
        create(&[
            "--spiffe-id",
            "spiffe://example.org/y",
            "--parent-id",
            "spiffe://example.org/node",
            "--selector",
            "k8s:ns:y",
            "--ttl",
            "0",
        ]),
        1,
        &["x509_ttl"],
    );

    // Two writers that read revision 1: the second is refused, not lost.
    let stale = [
        "entry",
        "update",
        "--entry-id",
        &id,
        "--revision",
        "1",
        "--jwt-ttl",
        "60",
    ];
    let first = one_entry_json(&server, &stale);
    assert_eq!(first["revision"], 2, "{first}");
    assert_eq!(first["jwt_ttl"], 60, "{first}");
    refused(zt(&server, &stale), 1, &[&id, "revision"]);
    assert_eq!(show_json(&server, &["--entry-id", &id]), vec![first]);

    refused(
        zt(
            &server,
            &[
                "agent",
                "token",
                "create",
                "--spiffe-id",
                "spiffe://example.org/agent/n",
                "--ttl",
                "2d",
            ],
        ),
        1,
        &["ttl 172800s is not between 1s and 86400s (24h)"],
    );

    // No server behind the socket.
    let nowhere = tmp.path().join("nowhere/admin.sock");
    let out = zt_at(&nowhere, &["entry", "count"]);
    assert_failure(&out, 1, &[nowhere.to_str().unwrap(), "zt server"]);
}

#[test]
fn oversized_request_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), None);
    let socket = server.socket();

    // 100 KiB, over the 64 KiB limit: a valid-looking document with a huge selector list.
    let mut body = String::from(
        r#"{"spiffe_id":"spiffe://example.org/big","parent_id":"spiffe://example.org/node","selectors":["#,
    );
    while body.len() < 100 * 1024 {
        body.push_str(r#""k8s:ns:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","#);
    }
    body.push_str(r#""k8s:ns:z"],"x509_ttl":60,"jwt_ttl":60,"dns_names":[],"admin":false,"node":false}"#);
    let (status, answer) = admin_post(&socket, "/v1/entries", body.as_bytes());
    assert_eq!(status, 413, "100 KiB body: {answer}");

    // Malformed JSON: 400, with a JSON error that says where.
    let (status, answer) = admin_post(&socket, "/v1/entries", br#"{"spiffe_id": "#);
    assert_eq!(status, 400, "{answer}");
    let doc: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"));
    let error = doc["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {doc}"));
    assert!(error.contains("request body"), "{error}");
    assert!(error.contains("line 1"), "{error}");

    // A well-formed document missing a field: named.
    let (status, answer) = admin_post(
        &socket,
        "/v1/entries",
        br#"{"spiffe_id":"spiffe://example.org/a","parent_id":"spiffe://example.org/n"}"#,
    );
    assert_eq!(status, 400, "{answer}");
    let doc: Value = serde_json::from_str(&answer).unwrap();
    assert!(doc["error"].as_str().unwrap().contains("selectors"), "{doc}");

    // The server is still serving, and stored nothing.
    assert_eq!(count(&server), 0);
    ok(&server, SEED_CREATE);
    assert_eq!(count(&server), 1);
}

#[test]
fn join_token_create() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), None);
    let create = [
        "agent",
        "token",
        "create",
        "--spiffe-id",
        "spiffe://example.org/agent/node-1",
        "--ttl",
        "10m",
    ];

    let text = ok(&server, &create);
    let token = text
        .lines()
        .find_map(|line| line.strip_prefix("Token: "))
        .unwrap_or_else(|| panic!("no Token line:\n{text}"));
    assert!(token.len() >= 43, "short token {token:?}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "token {token:?} is not base64url"
    );
    assert!(
        text.lines().any(|line| line.starts_with("Expires: ")),
        "no Expires line:\n{text}"
    );

    let mut json_args = create.to_vec();
    json_args.extend(["--output", "json"]);
    let before = now();
    let doc: Value = serde_json::from_str(&ok(&server, &json_args)).unwrap();
    let after = now();
    let second = doc["token"].as_str().unwrap_or_else(|| panic!("{doc}"));
    assert!(second.len() >= 43, "{doc}");
    assert_ne!(second, token, "two tokens are the same");
    let expires = doc["expires_at"].as_u64().unwrap_or_else(|| panic!("{doc}"));
    assert!(
        (before + 600..=after + 600).contains(&expires),
        "expires_at {expires} is not 10 minutes from now ({before})"
    );
}

/// `zt x509 mint` (SPIRE's `x509 mint`): an SVID for a key made by the caller,
/// verified by `zt svid inspect` and by openssl; bad requests are refused, each saying why.
#[test]
fn x509_mint_signs_for_a_local_key() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), None);
    let dir = tmp.path().join("minted");
    let dir_arg = dir.to_str().unwrap();
    let id = "spiffe://example.org/ns/default/sa/client";
    let text = ok(
        &server,
        &[
            "x509",
            "mint",
            "-spiffeID",
            id,
            "--ttl",
            "10m",
            "--dns",
            "localhost",
            "--write",
            dir_arg,
        ],
    );
    assert!(text.contains(id), "{text}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(dir.join("key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key.pem mode {mode:o}");
    let inspect = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["svid", "inspect", "--output", "json", "--bundle"])
        .arg(dir.join("bundle.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .arg(dir.join("svid.pem"))
        .output()
        .unwrap();
    let inspected = succeed(&inspect, "zt svid inspect");
    let doc: Value = serde_json::from_str(&inspected).unwrap_or_else(|e| panic!("{e}: {inspected}"));
    assert_eq!(doc["spiffe_id"], id, "{doc}");
    assert!(inspected.contains("localhost"), "no DNS SAN: {doc}");
    let not_after = time::OffsetDateTime::parse(
        doc["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let lifetime = u64::try_from(not_after.unix_timestamp()).unwrap() - now();
    assert!(
        (500..=600).contains(&lifetime),
        "lifetime {lifetime}s for --ttl 10m: {doc}"
    );
    if let Some(openssl) = zt_testkit::openssl("x509_mint_signs_for_a_local_key") {
        let out = Command::new(openssl)
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(dir.join("bundle.pem"))
            .arg(dir.join("svid.pem"))
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl verify: {}", describe(&out));
    }

    let refused = |args: &[&str], expected: &str| {
        let out = zt(&server, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{args:?}: {}",
            describe(&out)
        );
    };
    refused(
        &["x509", "mint", "--spiffe-id", "spiffe://other.org/a"],
        "not in this server's trust domain example.org",
    );
    refused(
        &["x509", "mint", "--spiffe-id", "spiffe://example.org"],
        "needs a path",
    );
    // IDs zt gives only to enrolled devices and to its own parts: no mint,
    // entry or join token names them.
    for (reserved, whom) in [
        (
            "spiffe://example.org/device/0a1b",
            "reserved for enrolled devices",
        ),
        ("spiffe://example.org/zt/server", "reserved for zt's own parts"),
    ] {
        refused(&["x509", "mint", "--spiffe-id", reserved], whom);
        refused(
            &[
                "entry",
                "create",
                "--spiffe-id",
                reserved,
                "--parent-id",
                "spiffe://example.org/node",
                "--selector",
                "unix:uid:0",
            ],
            whom,
        );
    }
    refused(
        &[
            "agent",
            "token",
            "create",
            "--spiffe-id",
            "spiffe://example.org/device/0a1b",
        ],
        "reserved for enrolled devices",
    );
    ok(
        &server,
        &[
            "agent",
            "token",
            "create",
            "--spiffe-id",
            "spiffe://example.org/zt/agent/node-1",
        ],
    );
    refused(
        &["x509", "mint", "--spiffe-id", id, "--ttl", "48h"],
        "ttl 172800s is not between 1s and 86400s (24h)",
    );
    refused(
        &["x509", "mint", "--spiffe-id", id, "--dns", "not a name"],
        "not a name",
    );
    let (status, body) = admin_post(
        &server.socket(),
        "/v1/svids/x509",
        format!(r#"{{"spiffe_id":"{id}","csr":"AAAA","ttl_secs":60}}"#).as_bytes(),
    );
    assert_eq!(status, 400, "a CSR that is not one: {body}");
    assert!(body.contains("signing request"), "{body}");
}

#[test]
fn second_server_on_same_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let server = ServerProcess::start(&data_dir, None);
    ok(&server, SEED_CREATE);

    let mut second = ServerProcess::spawn(&data_dir, None);
    let status = wait_with_deadline(&mut second.child)
        .unwrap_or_else(|| panic!("a second server on the same data dir kept running"));
    let stderr = fs::read_to_string(&second.log).unwrap();
    assert!(!status.success(), "second server: {status}\n{stderr}");
    assert!(
        stderr.contains("another zt server is using this data directory"),
        "second server: {status}\n{stderr}"
    );
    assert!(stderr.contains(data_dir.to_str().unwrap()), "{stderr}");

    // The first one did not notice.
    assert!(server.socket().exists());
    assert_eq!(count(&server), 1);
    assert!(matches!(http_get(server.http, "/readyz"), Ok((200, _))));

    // A port in use is named by the flag that chose it.
    for (flag, taken) in [("--agent-api", server.agent_api), ("--http", server.http)] {
        let free: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let (http, agent_api) = if flag == "--http" {
            (taken, free)
        } else {
            (free, taken)
        };
        let other = tmp.path().join(format!("other{flag}"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zt"))
            .args(["server", "--trust-domain", "example.org", "--data-dir"])
            .arg(&other)
            .args(["--http", &http.to_string(), "--agent-api", &agent_api.to_string()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(&format!("{flag} {taken}: ")), "{flag}: {stderr}");
    }
}

#[test]
fn health_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), None);

    let (status, body) = http_get(server.http, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(server.http, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");

    ok(&server, SEED_CREATE);
    let (status, metrics) = http_get(server.http, "/metrics").unwrap();
    assert_eq!(status, 200, "{metrics}");
    let lines: Vec<&str> = metrics.lines().collect();
    for line in ["zt_server_entries 1", "zt_server_datastore_errors_total 0"] {
        assert!(lines.contains(&line), "/metrics lacks {line:?}:\n{metrics}");
    }

    let (status, body) = http_get(server.http, "/nope").unwrap();
    assert_eq!(status, 404, "{body}");
}

#[test]
fn sigkill_mid_write_leaves_a_consistent_datastore() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut server = ServerProcess::start(&data_dir, None);

    let succeeded = Arc::new(AtomicUsize::new(0));
    let writer = {
        let socket = server.socket();
        let succeeded = succeeded.clone();
        thread::spawn(move || {
            for i in 0..200 {
                let id = format!("spiffe://example.org/workload/{i}");
                let out = zt_at(
                    &socket,
                    &[
                        "entry",
                        "create",
                        "--spiffe-id",
                        &id,
                        "--parent-id",
                        "spiffe://example.org/node",
                        "--selector",
                        "unix:uid:1000",
                    ],
                );
                if !out.status.success() {
                    return Some(out);
                }
                succeeded.fetch_add(1, Ordering::SeqCst);
            }
            None
        })
    };
    let start = Instant::now();
    while succeeded.load(Ordering::SeqCst) < 20 && !writer.is_finished() {
        assert!(
            start.elapsed() < DEADLINE * 3,
            "20 creates took over {:?}",
            DEADLINE * 3
        );
        thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let failure = writer.join().unwrap();
    let committed = succeeded.load(Ordering::SeqCst);
    assert!(committed >= 20, "only {committed} creates succeeded: {failure:?}");
    if let Some(out) = &failure {
        // The create that ran into the kill says the server is gone, in one line.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("zt: ") && stderr.lines().count() == 1,
            "{}",
            describe(out)
        );
    }

    let server = ServerProcess::start(&data_dir, None);
    let counted = count(&server);
    let listed = show_json(&server, &[]);
    eprintln!("{committed} creates succeeded before SIGKILL; {counted} entries after restart");
    assert_eq!(counted, listed.len() as u64, "count and list disagree");
    assert!(
        counted >= committed as u64,
        "{committed} creates reported success but only {counted} entries survived the kill"
    );
    assert!(
        counted <= committed as u64 + 1,
        "{counted} entries from {committed} successful creates (at most one was in flight)"
    );
    // Every one is whole and the first `committed` are all there.
    for entry in &listed {
        assert_eq!(entry["revision"], 1, "{entry}");
        assert_eq!(
            entry["selectors"],
            serde_json::json!(["unix:uid:1000"]),
            "{entry}"
        );
    }
    for i in 0..committed {
        let id = format!("spiffe://example.org/workload/{i}");
        assert_eq!(show_json(&server, &["--spiffe-id", &id]).len(), 1, "{id} lost");
    }
    // And the datastore still takes writes.
    ok(&server, SEED_CREATE);
    assert_eq!(count(&server), counted + 1);
}

#[test]
fn sigterm_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut server = ServerProcess::start(&data_dir, None);
    ok(&server, SEED_CREATE);

    let status = server.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        server.stderr()
    );
    assert!(
        !server.socket().exists(),
        "admin socket left behind after SIGTERM"
    );
    let log = server.stderr();
    assert!(log.contains("zt server stopped"), "{log}");

    // The data directory is free again and the entry is still there.
    let server = ServerProcess::start(&data_dir, None);
    assert_eq!(count(&server), 1);
}

#[test]
fn two_servers_share_postgres() {
    let Some(url) = postgres_database("two_servers_share_postgres") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // One after the other (starting together is `servers_starting_together_on_postgres`).
    let a = ServerProcess::start(&tmp.path().join("a"), Some(&url));
    let b = ServerProcess::start(&tmp.path().join("b"), Some(&url));
    assert_ne!(a.http, b.http);

    let created = one_entry_json(&a, SEED_CREATE);
    let id = created["id"].as_str().unwrap().to_owned();
    let seen = show_json(&b, &["--spiffe-id", "spiffe://example.org/payment"]);
    assert_eq!(seen, vec![created.clone()], "server B does not see A's entry");
    assert_eq!(count(&b), 1);

    let updated = one_entry_json(&b, &["entry", "update", "--entry-id", &id, "--jwt-ttl", "120"]);
    assert_eq!(updated["revision"], 2, "{updated}");
    let seen = show_json(&a, &["--entry-id", &id]);
    assert_eq!(seen, vec![updated], "server A does not see B's update");

    // Both change revision 2 at the same time: exactly one wins.
    let racer = |server: &ServerProcess, ttl: &str| {
        Command::new(env!("CARGO_BIN_EXE_zt"))
            .args([
                "entry",
                "update",
                "--entry-id",
                &id,
                "--revision",
                "2",
                "--jwt-ttl",
                ttl,
            ])
            .arg("--socket")
            .arg(server.socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (racer_a, racer_b) = (racer(&a, "61"), racer(&b, "62"));
    let out_a = racer_a.wait_with_output().unwrap();
    let out_b = racer_b.wait_with_output().unwrap();
    let wins = [&out_a, &out_b].iter().filter(|o| o.status.success()).count();
    assert_eq!(
        wins,
        1,
        "concurrent updates at revision 2:\nA: {}\nB: {}",
        describe(&out_a),
        describe(&out_b)
    );
    let (winner_ttl, loser) = if out_a.status.success() {
        (61, &out_b)
    } else {
        (62, &out_a)
    };
    assert_failure(loser, 1, &[&id, "revision"]);
    for server in [&a, &b] {
        let now = show_json(server, &["--entry-id", &id]);
        assert_eq!(now[0]["revision"], 3, "{now:?}");
        assert_eq!(now[0]["jwt_ttl"], winner_ttl, "{now:?}");
    }
}

#[test]
fn servers_starting_together_on_postgres() {
    // Several servers of one deployment (re)started at once on a fresh database:
    // all of them must come up, whichever runs the migrations. The race is
    // narrow, so a few rounds of three.
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..4 {
        let Some(url) = postgres_database("servers_starting_together_on_postgres") else {
            return;
        };
        let mut servers: Vec<ServerProcess> = (0..3)
            .map(|i| ServerProcess::spawn(&tmp.path().join(format!("r{round}s{i}")), Some(&url)))
            .collect();
        for server in &mut servers {
            server.wait_ready();
        }
        ok(&servers[0], SEED_CREATE);
        for server in &servers {
            assert_eq!(count(server), 1);
        }
        // One authority, decided in the database: every ready server serves the
        // same bundle, and an SVID minted through one verifies against another's.
        let bundles: Vec<String> = servers.iter().map(|s| ok(s, &["bundle", "show"])).collect();
        assert_eq!(
            bundles[0].matches("BEGIN CERTIFICATE").count(),
            1,
            "round {round}"
        );
        for (i, bundle) in bundles.iter().enumerate() {
            assert_eq!(
                bundle, &bundles[0],
                "round {round}: server {i} serves another bundle"
            );
        }
        let minted = tmp.path().join(format!("minted-{round}"));
        ok(
            &servers[0],
            &[
                "x509",
                "mint",
                "-spiffeID",
                "spiffe://example.org/w",
                "--ttl",
                "1m",
                "--write",
                minted.to_str().unwrap(),
            ],
        );
        let chain =
            zt_identity::x509::certificates_from_pem(&fs::read(minted.join("svid.pem")).unwrap()).unwrap();
        let other = zt_identity::Bundle::parse(bundles[2].as_bytes(), None).unwrap();
        zt_identity::verify_x509_svid(
            &chain,
            &other,
            rustls_pki_types::UnixTime::now(),
            Purpose::ServerAuth,
        )
        .unwrap_or_else(|e| panic!("round {round}: server 0's SVID against server 2's bundle: {e}"));
    }
}

/// The agent API end to end, as a node agent uses it: attestation with a join
/// token over server-authenticated TLS, then mTLS with the agent SVID for the sync
/// stream, SVID signing and JWT minting; refusals for what the agent may not do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_api_attests_syncs_and_signs() {
    use zt_api::agent::agent_client::AgentClient;
    use zt_api::agent::{
        AttestJoinTokenRequest, MintJwtSvidRequest, RenewAgentRequest, SignX509SvidRequest, SyncRequest,
    };
    use zt_identity::{Bundle, BundleSet, Purpose, TrustDomain};
    use zt_tls::{PeerMatcher, TlsVersions};

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), None);
    let token_out = ok(
        &server,
        &[
            "agent",
            "token",
            "create",
            "--spiffe-id",
            "spiffe://example.org/agent/node-1",
        ],
    );
    let token = token_out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("Token: ")
        .to_owned();
    let create = |id: &str, parent: &str| {
        let out = ok(
            &server,
            &[
                "entry",
                "create",
                "--spiffe-id",
                id,
                "--parent-id",
                parent,
                "--selector",
                "unix:uid:1000",
                "--output",
                "json",
            ],
        );
        let doc: Value = serde_json::from_str(&out).unwrap();
        doc["entries"][0]["id"].as_str().unwrap().to_owned()
    };
    let payment = create(
        "spiffe://example.org/payment",
        "spiffe://example.org/agent/node-1",
    );
    let other = create("spiffe://example.org/other", "spiffe://example.org/agent/node-2");

    // Trust bootstrap: the bundle from the admin API, as an operator would hand it over.
    let bundle = Bundle::parse(ok(&server, &["bundle", "show"]).as_bytes(), None).unwrap();
    let mut bundles = BundleSet::default();
    bundles.insert(bundle.clone());
    let bundles = Arc::new(bundles);
    let server_id = PeerMatcher::OneOf(vec![
        zt_identity::SpiffeId::parse("spiffe://example.org/zt/server").unwrap(),
    ]);
    let anonymous =
        zt_tls::client_config_anonymous(bundles.clone(), server_id.clone(), TlsVersions::Tls13).unwrap();
    let mut attest_client = AgentClient::new(zt_api::channel(server.agent_api, Arc::new(anonymous)).unwrap());

    // Attestation: the join token works once.
    let (agent_key, csr) = zt_ca::key_and_csr().unwrap();
    let bad = attest_client
        .attest_join_token(AttestJoinTokenRequest {
            token: token.clone(),
            csr: b"not a csr".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad}");
    // …and the token is not used up by a request that could not be signed.
    let attested = attest_client
        .attest_join_token(AttestJoinTokenRequest {
            token: token.clone(),
            csr: csr.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let agent_svid = attested.svid.unwrap();
    assert_eq!(agent_svid.spiffe_id, "spiffe://example.org/agent/node-1");
    let chain: Vec<_> = agent_svid.cert_chain.iter().map(|c| c.clone().into()).collect();
    let at = rustls_pki_types::UnixTime::now();
    let verified = zt_identity::verify_x509_svid(&chain, &bundle, at, Purpose::ClientAuth).unwrap();
    assert_eq!(
        verified.spiffe_id().to_string(),
        "spiffe://example.org/agent/node-1"
    );
    let replay = attest_client
        .attest_join_token(AttestJoinTokenRequest { token, csr })
        .await
        .unwrap_err();
    assert_eq!(replay.code(), tonic::Code::PermissionDenied, "{replay}");
    assert!(replay.message().contains("already used"), "{replay}");

    // Without the agent SVID, nothing else is answered.
    let anonymous_sign = attest_client
        .sign_x509_svid(SignX509SvidRequest {
            entry_id: payment.clone(),
            csr: zt_ca::key_and_csr().unwrap().1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        anonymous_sign.code(),
        tonic::Code::Unauthenticated,
        "{anonymous_sign}"
    );

    // mTLS with the agent SVID.
    let key = zt_identity::x509::private_key_from_pem(agent_key.as_bytes()).unwrap();
    let mtls = zt_tls::client_config(
        chain.clone(),
        key,
        bundles.clone(),
        server_id.clone(),
        TlsVersions::Tls13,
    )
    .unwrap();
    let mut agent = AgentClient::new(zt_api::channel(server.agent_api, Arc::new(mtls)).unwrap());

    let mut sync = agent.sync(SyncRequest {}).await.unwrap().into_inner();
    let first = sync.message().await.unwrap().unwrap();
    let ids: Vec<_> = first.entries.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, vec![payment.clone()], "only the entries under this agent");
    assert!(first.bundle.is_some());

    let signed = agent
        .sign_x509_svid(SignX509SvidRequest {
            entry_id: payment.clone(),
            csr: zt_ca::key_and_csr().unwrap().1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed.spiffe_id, "spiffe://example.org/payment");
    let chain: Vec<_> = signed.cert_chain.iter().map(|c| c.clone().into()).collect();
    zt_identity::verify_x509_svid(&chain, &bundle, at, Purpose::ServerAuth).unwrap();

    let refused = agent
        .sign_x509_svid(SignX509SvidRequest {
            entry_id: other.clone(),
            csr: zt_ca::key_and_csr().unwrap().1,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(
        server
            .stderr()
            .contains("refused: agent not authorized for entry"),
        "the attempt is audited"
    );
    let bad_csr = agent
        .sign_x509_svid(SignX509SvidRequest {
            entry_id: payment.clone(),
            csr: b"not a csr".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_csr.code(), tonic::Code::InvalidArgument, "{bad_csr}");

    let jwt = agent
        .mint_jwt_svid(MintJwtSvidRequest {
            entry_id: payment.clone(),
            audience: vec!["db".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let jwks = Bundle::parse(
        ok(&server, &["bundle", "show", "--format", "jwks"]).as_bytes(),
        Some(TrustDomain::parse("example.org").unwrap()),
    )
    .unwrap();
    let claims = zt_identity::verify_jwt_svid(&jwt.token, &jwks, "db", now()).unwrap();
    assert_eq!(claims.spiffe_id().to_string(), "spiffe://example.org/payment");

    // A new entry for this agent reaches the open sync stream.
    let started = Instant::now();
    let added = create(
        "spiffe://example.org/billing",
        "spiffe://example.org/agent/node-1",
    );
    let next = next_state(&mut sync, |s| s.entries.iter().any(|e| e.id == added)).await;
    eprintln!(
        "entry reached the agent's sync stream {:?} after the create command started",
        started.elapsed()
    );
    assert!(next.entries.iter().any(|e| e.id == added), "{next:?}");

    // Renewal: the new SVID works, the old one is refused from then on.
    let (renewed_key, renewal_csr) = zt_ca::key_and_csr().unwrap();
    let renewed = agent
        .renew_agent(RenewAgentRequest { csr: renewal_csr })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert_eq!(renewed.spiffe_id, "spiffe://example.org/agent/node-1");
    let stale = agent.sync(SyncRequest {}).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::PermissionDenied, "{stale}");
    let chain: Vec<_> = renewed.cert_chain.iter().map(|c| c.clone().into()).collect();
    let key = zt_identity::x509::private_key_from_pem(renewed_key.as_bytes()).unwrap();
    let mtls = zt_tls::client_config(chain, key, bundles.clone(), server_id, TlsVersions::Tls13).unwrap();
    let mut agent = AgentClient::new(zt_api::channel(server.agent_api, Arc::new(mtls)).unwrap());
    let mut sync = agent.sync(SyncRequest {}).await.unwrap().into_inner();
    let state = sync.message().await.unwrap().unwrap();
    assert!(
        state.revoked_ids.is_empty() && state.revoked_serials.is_empty(),
        "{state:?}"
    );
    let listed = ok(&server, &["agent", "list"]);
    assert!(listed.contains("spiffe://example.org/agent/node-1"), "{listed}");

    // A revocation reaches the agent's stream at once.
    let started = Instant::now();
    ok(
        &server,
        &[
            "revoke",
            "-spiffeID",
            "spiffe://example.org/payment",
            "--reason",
            "key leaked",
        ],
    );
    let state = next_state(&mut sync, |s| !s.revoked_ids.is_empty()).await;
    eprintln!(
        "revocation reached the agent's sync stream {:?} after the revoke command started",
        started.elapsed()
    );
    assert_eq!(state.revoked_ids.len(), 1, "{state:?}");
    assert_eq!(state.revoked_ids[0].spiffe_id, "spiffe://example.org/payment");
    let serial = zt_identity::x509::hex_compact(
        &zt_identity::x509::summarize(&signed.cert_chain[0].clone().into())
            .unwrap()
            .serial,
    );
    ok(&server, &["revoke", "--serial", &serial]);
    let state = next_state(&mut sync, |s| !s.revoked_serials.is_empty()).await;
    assert_eq!(state.revoked_serials, vec![serial.replace(':', "")], "{state:?}");

    // A forced rotation: SVIDs of the old authority still verify against the new
    // bundle, new ones come from the new authority, and the stream carries the bundle.
    let old_sequence = state.bundle.as_ref().unwrap().sequence;
    ok(&server, &["ca", "rotate"]);
    let rotated_bundle = Bundle::parse(ok(&server, &["bundle", "show"]).as_bytes(), None).unwrap();
    assert_eq!(rotated_bundle.x509_authorities().len(), 2);
    let old_chain: Vec<_> = signed.cert_chain.iter().map(|c| c.clone().into()).collect();
    zt_identity::verify_x509_svid(&old_chain, &rotated_bundle, at, Purpose::ServerAuth).unwrap();
    let fresh = agent
        .sign_x509_svid(SignX509SvidRequest {
            entry_id: added.clone(),
            csr: zt_ca::key_and_csr().unwrap().1,
        })
        .await
        .unwrap()
        .into_inner();
    let fresh_chain: Vec<_> = fresh.cert_chain.iter().map(|c| c.clone().into()).collect();
    zt_identity::verify_x509_svid(&fresh_chain, &rotated_bundle, at, Purpose::ServerAuth).unwrap();
    let before = zt_identity::verify_x509_svid(&fresh_chain, &bundle, at, Purpose::ServerAuth).unwrap_err();
    assert!(
        matches!(before, zt_identity::X509SvidError::UntrustedIssuer(_)),
        "signed by the new authority: {before}"
    );
    let state = next_state(&mut sync, |s| {
        s.bundle.as_ref().is_some_and(|b| b.sequence > old_sequence)
    })
    .await;
    assert!(
        state.bundle.as_ref().unwrap().sequence > old_sequence,
        "{state:?}"
    );

    // Revoking the agent's own ID cuts its calls off before any eviction.
    ok(
        &server,
        &["revoke", "--spiffe-id", "spiffe://example.org/agent/node-1"],
    );
    let revoked = agent
        .sign_x509_svid(SignX509SvidRequest {
            entry_id: added.clone(),
            csr: zt_ca::key_and_csr().unwrap().1,
        })
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), tonic::Code::PermissionDenied, "{revoked}");

    // Eviction cuts the agent off: its stream ends, its calls are refused, its SVID is revoked.
    ok(
        &server,
        &[
            "agent",
            "evict",
            "--spiffe-id",
            "spiffe://example.org/agent/node-1",
        ],
    );
    // States already on their way may come first; then the stream ends.
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match sync.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without saying why"),
                Err(status) => return status,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended}");
    let refused = agent.sync(SyncRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert_failure(
        &zt(
            &server,
            &[
                "agent",
                "show",
                "--spiffe-id",
                "spiffe://example.org/agent/node-1",
            ],
        ),
        1,
        &["not attested"],
    );
}

/// SPIRE's schedule with a short CA lifetime: the next authority is prepared (and
/// in the bundle) at half the active one's life and activated at five sixths; new
/// SVIDs then chain to it alone. Only what is logically necessary is asserted,
/// never a duration: what the test observes happened before it looked, so a
/// preparation seen at unix time `t` says `t >= notBefore + ttl/2`.
#[test]
fn ca_rotates_on_schedule() {
    use zt_identity::Bundle;
    const TTL: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = ServerProcess::spawn_with(&data_dir, None, &["--ca-ttl", "12s"]);
    server.wait_ready();
    let bundle =
        |server: &ServerProcess| Bundle::parse(ok(server, &["bundle", "show"]).as_bytes(), None).unwrap();
    let only = |authority: &rustls_pki_types::CertificateDer<'static>| {
        Bundle::parse(zt_identity::x509::to_pem(authority).as_bytes(), None).unwrap()
    };
    let minted = dir.path().join("minted");
    let mint = || {
        let _ = fs::remove_dir_all(&minted);
        ok(
            &server,
            &[
                "x509",
                "mint",
                "-spiffeID",
                "spiffe://example.org/w",
                "--ttl",
                "1m",
                "--write",
                minted.to_str().unwrap(),
            ],
        );
        zt_identity::x509::certificates_from_pem(&fs::read(minted.join("svid.pem")).unwrap()).unwrap()
    };
    let chains_to = |chain: &[rustls_pki_types::CertificateDer<'static>], bundle: &Bundle| {
        zt_identity::verify_x509_svid(
            chain,
            bundle,
            rustls_pki_types::UnixTime::now(),
            Purpose::ServerAuth,
        )
        .is_ok()
    };

    let first = bundle(&server).x509_authorities().to_vec();
    assert_eq!(first.len(), 1);
    let first = first[0].clone();
    let not_before = zt_identity::x509::summarize(&first).unwrap().not_before;
    let start = Instant::now();
    let next = loop {
        let authorities = bundle(&server).x509_authorities().to_vec();
        if authorities.len() == 2 {
            assert!(
                now() >= not_before + TTL / 2,
                "the next authority was prepared before half the active one's life"
            );
            assert_eq!(authorities[0], first, "the first authority left the bundle");
            break authorities[1].clone();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no authority prepared within {DEADLINE:?}"
        );
        thread::sleep(POLL * 10);
    };
    loop {
        let chain = mint();
        if chains_to(&chain, &only(&next)) {
            assert!(
                now() >= not_before + TTL * 5 / 6,
                "the prepared authority was activated before five sixths of the active one's life"
            );
            assert!(
                !chains_to(&chain, &only(&first)),
                "a new SVID chains to the old authority too"
            );
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "prepared authority not activated within {DEADLINE:?}:\n{}",
            server.stderr()
        );
        thread::sleep(POLL * 10);
    }
    let authorities = bundle(&server).x509_authorities().to_vec();
    assert_eq!(
        authorities,
        [first, next],
        "both authorities stay in the bundle while the old one's SVIDs may live"
    );
}

/// The next state on a sync stream that satisfies `wanted`; states already on their
/// way (the stream sends the full state on every change) are skipped.
async fn next_state(
    sync: &mut tonic::Streaming<zt_api::agent::SyncResponse>,
    wanted: impl Fn(&zt_api::agent::SyncResponse) -> bool,
) -> zt_api::agent::SyncResponse {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let state = sync.message().await.unwrap().expect("the stream ended");
            if wanted(&state) {
                return state;
            }
        }
    })
    .await
    .expect("no wanted state within the deadline")
}

/// SIGTERM with an agent's sync stream open: the stream ends with Unavailable and
/// the server exits cleanly, instead of waiting for the agent to hang up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_sync_streams() {
    use zt_api::agent::agent_client::AgentClient;
    use zt_api::agent::{AttestJoinTokenRequest, SyncRequest};
    use zt_identity::{Bundle, BundleSet, SpiffeId};
    use zt_tls::{PeerMatcher, TlsVersions};

    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"), None);
    let out = ok(&server, &["agent", "token", "create"]);
    let token = out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("Token: ")
        .to_owned();
    let mut bundles = BundleSet::default();
    bundles.insert(Bundle::parse(ok(&server, &["bundle", "show"]).as_bytes(), None).unwrap());
    let bundles = Arc::new(bundles);
    let server_id = PeerMatcher::OneOf(vec![SpiffeId::parse("spiffe://example.org/zt/server").unwrap()]);

    let anonymous =
        zt_tls::client_config_anonymous(bundles.clone(), server_id.clone(), TlsVersions::Tls13).unwrap();
    let (key, csr) = zt_ca::key_and_csr().unwrap();
    let svid = AgentClient::new(zt_api::channel(server.agent_api, Arc::new(anonymous)).unwrap())
        .attest_join_token(AttestJoinTokenRequest { token, csr })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert!(
        svid.spiffe_id
            .starts_with("spiffe://example.org/zt/agent/join_token/"),
        "{}",
        svid.spiffe_id
    );
    let chain = svid.cert_chain.into_iter().map(Into::into).collect();
    let key = zt_identity::x509::private_key_from_pem(key.as_bytes()).unwrap();
    let mtls = zt_tls::client_config(chain, key, bundles, server_id, TlsVersions::Tls13).unwrap();
    let mut agent = AgentClient::new(zt_api::channel(server.agent_api, Arc::new(mtls)).unwrap());
    let mut sync = agent.sync(SyncRequest {}).await.unwrap().into_inner();
    sync.message().await.unwrap().unwrap();

    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{}\n{}", status.0, status.1.stderr());
    let ended = tokio::time::timeout(DEADLINE, sync.message()).await.unwrap();
    match ended {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status}"),
        Ok(None) => {}
        Ok(Some(state)) => panic!("a state after shutdown: {state:?}"),
    }
}

/// `zt server --data-dir DIR` under `umask 000`, DIR made beforehand with mode
/// 0755: DIR becomes 0700, and the datastore (with the WAL and SHM files SQLite
/// makes), the lock and the admin socket are 0600. A DIR of another user is
/// refused, naming it, its owner and its mode, and left as it was.
#[test]
fn data_dir_and_admin_socket_are_private_under_umask_000() {
    use std::os::unix::fs::PermissionsExt as _;
    use zt_testkit::mode_of;
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    fs::create_dir(&data_dir).unwrap();
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let zt_path = std::path::Path::new(env!("CARGO_BIN_EXE_zt"));
    let serve = |data_dir: &std::path::Path| {
        let http = format!("127.0.0.1:{}", free_port());
        let agent_api = format!("127.0.0.1:{}", free_port());
        zt_testkit::under_umask_000(zt_path)
            .args([
                "server",
                "--trust-domain",
                TRUST_DOMAIN,
                "--http",
                &http,
                "--agent-api",
                &agent_api,
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("ZT_ADMIN_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = serve(&data_dir);
    let socket = data_dir.join(zt_server::ADMIN_SOCKET);
    let deadline = Instant::now() + DEADLINE;
    // Ready once a join token (a write, so the WAL and SHM files exist) is made.
    loop {
        assert!(child.try_wait().unwrap().is_none(), "zt server exited");
        let out = zt_at(
            &socket,
            &[
                "agent",
                "token",
                "create",
                "--spiffe-id",
                "spiffe://example.org/a",
            ],
        );
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "zt server not ready: {}",
            describe(&out)
        );
        thread::sleep(POLL);
    }
    let modes: Vec<(String, u32)> = [
        "",
        "datastore.sqlite3",
        "datastore.sqlite3-wal",
        "datastore.sqlite3-shm",
        "server.lock",
        zt_server::ADMIN_SOCKET,
    ]
    .iter()
    .map(|name| (name.to_string(), mode_of(&data_dir.join(name))))
    .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        modes,
        [
            ("".to_string(), 0o700),
            ("datastore.sqlite3".into(), 0o600),
            ("datastore.sqlite3-wal".into(), 0o600),
            ("datastore.sqlite3-shm".into(), 0o600),
            ("server.lock".into(), 0o600),
            (zt_server::ADMIN_SOCKET.into(), 0o600),
        ]
    );

    let theirs = tmp.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let out = serve(&theirs).wait_with_output().unwrap();
    let needle = format!(
        "{}: owned by uid 65534 (mode 755), not by this user",
        theirs.display()
    );
    assert!(
        out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains(&needle),
        "{}",
        describe(&out)
    );
    assert_eq!(mode_of(&theirs), 0o755);
    assert_eq!(
        fs::read_dir(&theirs).unwrap().count(),
        0,
        "nothing was made in it"
    );
}

/// `zt server --pdp`: a Rego memory bomb PUT through the PDP API answers
/// OPA's 500, and the server goes on deciding, with its control plane ready.
#[test]
fn rego_memory_bomb_leaves_zt_server_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("allow.rego");
    fs::write(
        &policy,
        "package authz\ndefault allow := false\nallow if input.user == \"alice\"\n",
    )
    .unwrap();
    let mut server = ServerProcess::spawn_with(
        &tmp.path().join("data"),
        None,
        &[
            "--pdp",
            policy.to_str().unwrap(),
            "--allow-policy-writes",
            "--rego-max-memory",
            "128MiB",
            "--rego-timeout",
            "120s",
        ],
    );
    server.wait_ready();
    let bombs = [
        ("example", "x := count([i | some i in numbers.range(1, 1e9)])"),
        (
            "array",
            "x := count([concat(\"\", [input.pad, format_int(i, 10)]) | some i in numbers.range(1, 1000000)])",
        ),
        (
            "doubling",
            "s0 := input.pad\ns1 := concat(\"\", [s0, s0])\ns2 := concat(\"\", [s1, s1])\ns3 := concat(\"\", [s2, s2])\ns4 := concat(\"\", [s3, s3])\ns5 := concat(\"\", [s4, s4])\ns6 := concat(\"\", [s5, s5])\ns7 := concat(\"\", [s6, s6])\ns8 := concat(\"\", [s7, s7])\ns9 := concat(\"\", [s8, s8])\ns10 := concat(\"\", [s9, s9])\ns11 := concat(\"\", [s10, s10])\ns12 := concat(\"\", [s11, s11])\nx := count(s12)",
        ),
    ];
    let input = serde_json::json!({"input": {"pad": "x".repeat(64 << 20 >> 4)}}).to_string();
    let alice = serde_json::json!({"input": {"user": "alice"}}).to_string();
    for (name, rules) in bombs {
        let put = http_request(
            server.http,
            "PUT",
            &format!("/v1/policies/{name}.rego"),
            &[],
            &format!("package bomb.{name}\n{rules}\n"),
        )
        .unwrap();
        assert_eq!(put.0, 200, "{name}: {put:?}");
        let (status, body) = http_request(
            server.http,
            "POST",
            &format!("/v1/data/bomb/{name}/x"),
            &[],
            &input,
        )
        .unwrap();
        assert_eq!(status, 500, "{name}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "internal_error", "{name}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("memory limit"),
            "{name}: {body}"
        );
        // Still deciding, still healthy, still ready.
        let (status, body) = http_request(server.http, "POST", "/v1/data/authz/allow", &[], &alice).unwrap();
        assert_eq!(
            (
                status,
                serde_json::from_str::<Value>(&body).unwrap()["result"].clone()
            ),
            (200, Value::Bool(true)),
            "after {name}: {body}"
        );
        assert_eq!(http_get(server.http, "/health").unwrap().0, 200, "after {name}");
        assert_eq!(http_get(server.http, "/readyz").unwrap().0, 200, "after {name}");
    }
    assert!(server.child.try_wait().unwrap().is_none(), "zt server exited");
    // The control plane too: an admin call answers.
    ok(&server, &["entry", "count"]);
}
