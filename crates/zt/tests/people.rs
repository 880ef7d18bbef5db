//! People in zt server, end to end: a real `zt server` on a temporary data
//! directory, driven with the real `zt user`, `zt group`, `zt client` and
//! `zt session` commands; the SQLite file read afterwards to prove that secrets
//! are stored only as hashes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use serde_json::Value;
use support::*;

fn json(server: &ServerProcess, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    serde_json::from_str(&ok(server, &args)).unwrap()
}

fn names(list: &Value, key: &str, field: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap().to_owned())
        .collect()
}

/// The datastore's bytes, its write-ahead log included (recent writes are there).
fn datastore_bytes(server: &ServerProcess) -> Vec<u8> {
    let mut bytes = Vec::new();
    for name in [
        zt_server::SQLITE_FILE.to_owned(),
        format!("{}-wal", zt_server::SQLITE_FILE),
    ] {
        if let Ok(more) = std::fs::read(server.data_dir.join(name)) {
            bytes.extend(more);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn users_groups_and_membership() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), None);
    assert_eq!(ok(&server, &["user", "list"]), "no users\n");

    ok(&server, &["group", "add", "staff"]);
    ok(&server, &["group", "add", "admins"]);
    let alice = json(
        &server,
        &[
            "user",
            "add",
            "alice",
            "--email",
            "alice@example.org",
            "--display-name",
            "Alice Liddell",
            "--group",
            "staff",
        ],
    );
    let sub = alice["sub"].as_str().unwrap().to_owned();
    assert_eq!(sub.len(), 32, "{alice}");
    assert!(!sub.contains("alice"));
    assert_eq!(alice["groups"], serde_json::json!(["staff"]));
    let text = ok(&server, &["user", "add", "bob", "--email", "bob@example.org"]);
    assert!(text.contains("Display name : bob"), "{text}");
    assert!(text.contains("Status       : enabled"), "{text}");

    assert_eq!(
        names(&json(&server, &["user", "list"]), "users", "name"),
        ["alice", "bob"]
    );
    let shown = json(&server, &["user", "show", "alice"]);
    assert_eq!(shown["sub"], sub.as_str());
    assert_eq!(shown["display_name"], "Alice Liddell");

    ok(&server, &["group", "add-member", "admins", "alice"]);
    ok(&server, &["group", "add-member", "staff", "bob"]);
    assert_eq!(ok(&server, &["group", "members", "staff"]), "alice\nbob\n");
    let groups = json(&server, &["group", "list"]);
    assert_eq!(names(&groups, "groups", "name"), ["admins", "staff"]);
    assert_eq!(groups["groups"][1]["members"], 2);
    ok(&server, &["group", "remove-member", "staff", "alice"]);
    assert_eq!(
        json(&server, &["user", "show", "alice"])["groups"],
        serde_json::json!(["admins"])
    );

    let disabled = json(&server, &["user", "disable", "alice"]);
    assert_eq!(disabled["disabled"], true);
    assert_eq!(disabled["sub"], sub.as_str(), "the sub never changes");
    let enabled = ok(&server, &["user", "enable", "alice"]);
    assert!(enabled.contains("Status       : enabled"), "{enabled}");

    // Refusals: one line, naming what is wrong.
    assert_failure(
        &zt(&server, &["user", "add", "alice", "--email", "a@example.org"]),
        1,
        &[r#"user "alice" already exists"#],
    );
    assert_failure(
        &zt(&server, &["user", "add", "carol", "--email", "not-an-address"]),
        1,
        &[r#"email "not-an-address""#, "expected local@domain"],
    );
    assert_failure(
        &zt(&server, &["user", "add", "has space", "--email", "c@example.org"]),
        1,
        &[r#"name "has space""#, "only letters, digits"],
    );
    assert_failure(
        &zt(
            &server,
            &[
                "user",
                "add",
                "carol",
                "--email",
                "c@example.org",
                "--group",
                "nope",
            ],
        ),
        1,
        &[r#"group "nope" not found"#],
    );
    assert_failure(
        &zt(&server, &["user", "show", "carol"]),
        1,
        &[r#"user "carol" not found"#],
    );
    assert_failure(
        &zt(&server, &["group", "remove-member", "staff", "alice"]),
        1,
        &["not found"],
    );
    assert_failure(&zt(&server, &["user", "add", "dave"]), 2, &["--email"]);

    let deleted = ok(&server, &["user", "delete", "bob"]);
    assert!(deleted.contains("Deleted user bob"), "{deleted}");
    assert_eq!(ok(&server, &["group", "members", "staff"]), "no members\n");
    ok(&server, &["group", "delete", "staff"]);
    assert_eq!(
        names(&json(&server, &["group", "list"]), "groups", "name"),
        ["admins"]
    );
    assert_failure(
        &zt(&server, &["group", "delete", "staff"]),
        1,
        &[r#"group "staff" not found"#],
    );
    assert_eq!(
        names(&json(&server, &["user", "list"]), "users", "name"),
        ["alice"]
    );
}

#[test]
fn client_secrets_are_printed_once_and_stored_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), None);
    let text = ok(
        &server,
        &[
            "client",
            "add",
            "web",
            "--redirect-uri",
            "https://app.example.org/callback",
        ],
    );
    let secret = text
        .lines()
        .find_map(|line| line.strip_prefix("Secret        : "))
        .unwrap_or_else(|| panic!("no secret printed: {text}"))
        .to_owned();
    assert!(secret.len() >= 43, "at least 256 bits: {secret}");
    assert!(
        text.contains("Grant types   : authorization_code, refresh_token"),
        "{text}"
    );

    // Never again: not in show, list or JSON.
    let shown = ok(&server, &["client", "show", "web"]);
    let listed = ok(&server, &["client", "list", "--output", "json"]);
    for out in [&shown, &listed] {
        assert!(!out.contains(&secret), "{out}");
        assert!(!out.contains("argon2"), "{out}");
    }
    // Stored only as an argon2id PHC string.
    let stored = datastore_bytes(&server);
    assert!(!contains(&stored, &secret), "the secret is in the datastore");
    assert!(
        contains(&stored, "$argon2id$v=19$"),
        "no argon2id hash in the datastore"
    );

    let public = json(
        &server,
        &[
            "client",
            "add",
            "cli",
            "--public",
            "--redirect-uri",
            "http://127.0.0.1:8400/cb",
            "--redirect-uri",
            "http://[::1]:8400/cb",
        ],
    );
    assert_eq!(public["secret"], Value::Null);
    assert_eq!(public["client"]["kind"], "public");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
    )
    .unwrap();
    let service = json(
        &server,
        &[
            "client",
            "add",
            "svc",
            "--jwks",
            jwks.to_str().unwrap(),
            "--grant",
            "client_credentials",
        ],
    );
    assert_eq!(service["client"]["kind"], "private_key_jwt");
    assert_eq!(
        service["client"]["grant_types"],
        serde_json::json!(["client_credentials"])
    );
    assert_eq!(
        names(&json(&server, &["client", "list"]), "clients", "client_id"),
        ["cli", "svc", "web"]
    );

    // Redirect URIs that cannot be matched safely are refused, before any request.
    for (uri, reason) in [
        ("https://app.example.org/cb#section", "has a fragment"),
        ("/callback", "not an absolute https://"),
        (
            "http://app.example.org/cb",
            "http is allowed only to a loopback address",
        ),
        ("https://user:pw@app.example.org/cb", "has userinfo"),
    ] {
        assert_failure(
            &zt(&server, &["client", "add", "bad", "--redirect-uri", uri]),
            2,
            &["--redirect-uri", uri, reason],
        );
    }
    let private = dir.path().join("private.json");
    std::fs::write(
        &private,
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"a","d":"secret"}]}"#,
    )
    .unwrap();
    assert_failure(
        &zt(
            &server,
            &["client", "add", "bad", "--jwks", private.to_str().unwrap()],
        ),
        1,
        &["--jwks", "private parameter \"d\""],
    );
    assert_failure(
        &zt(
            &server,
            &[
                "client",
                "add",
                "bad",
                "--redirect-uri",
                "https://a.example/cb",
                "--grant",
                "password",
            ],
        ),
        2,
        &["--grant", "expected one of"],
    );
    assert_failure(
        &zt(&server, &["client", "add", "bad", "--public", "--secret"]),
        2,
        &["--secret"],
    );
    assert_failure(
        &zt(
            &server,
            &[
                "client",
                "add",
                "web",
                "--public",
                "--redirect-uri",
                "https://a.example/cb",
            ],
        ),
        1,
        &[r#"client "web" already exists"#],
    );

    let deleted = ok(&server, &["client", "delete", "web"]);
    assert!(deleted.contains("Deleted client web"), "{deleted}");
    assert_failure(
        &zt(&server, &["client", "show", "web"]),
        1,
        &[r#"client "web" not found"#],
    );
}

#[test]
fn a_workload_is_registered_as_a_client_by_its_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), None);
    let id = format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/orders");
    let added = json(
        &server,
        &["client", "add", &id, "--spiffe", "--grant", "client_credentials"],
    );
    assert_eq!(added["client"]["kind"], "spiffe");
    assert_eq!(added["secret"], Value::Null);
    let shown = ok(&server, &["client", "show", &id]);
    assert!(shown.contains("JWT-SVID"), "{shown}");
    assert_failure(
        &zt(
            &server,
            &["client", "add", "spiffe://other.example/ns/x/sa/y", "--spiffe"],
        ),
        1,
        &["not in this server's trust domain"],
    );
    assert_failure(
        &zt(
            &server,
            &["client", "add", "spiffe://example.org/device/0a1b", "--spiffe"],
        ),
        1,
        &["a device is not a workload"],
    );
    assert_failure(
        &zt(
            &server,
            &["client", "add", &format!("{id}-2"), "--spiffe", "--secret"],
        ),
        2,
        &["--secret"],
    );
    assert_failure(
        &zt(
            &server,
            &[
                "client",
                "add",
                "ns/shop/sa/orders",
                "--grant",
                "client_credentials",
            ],
        ),
        1,
        &["client_id", "letters, digits"],
    );
    let deleted = ok(&server, &["client", "delete", &id]);
    assert!(deleted.contains(&id), "{deleted}");
}

#[test]
fn invites_are_stored_hashed_and_disabling_revokes_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), None);
    let alice = json(&server, &["user", "add", "alice", "--email", "alice@example.org"]);
    let sub = alice["sub"].as_str().unwrap();

    let text = ok(&server, &["user", "invite", "alice"]);
    let token = text
        .lines()
        .find_map(|line| line.strip_prefix("Token: "))
        .unwrap_or_else(|| panic!("no token printed: {text}"))
        .to_owned();
    assert!(token.len() >= 43, "{token}");
    let invite = json(&server, &["user", "invite", "alice", "--ttl", "5m"]);
    let lifetime = invite["expires_at"].as_u64().unwrap() - now();
    assert!((290..=300).contains(&lifetime), "{invite}");
    let stored = datastore_bytes(&server);
    assert!(!contains(&stored, &token), "the invite is in the datastore");
    assert!(
        contains(&stored, &zt_store::token_id(&token)),
        "its SHA-256 is not"
    );
    assert_failure(
        &zt(&server, &["user", "invite", "alice", "--ttl", "2d"]),
        2,
        &["--ttl", "longer than 24h"],
    );
    assert_failure(
        &zt(&server, &["user", "invite", "nobody"]),
        1,
        &[r#"user "nobody" not found"#],
    );

    // Sessions come from sign-in (crates/zt/tests/idp.rs); here they are opened in the datastore itself.
    let location = server.data_dir.join(zt_server::SQLITE_FILE);
    let sessions = block_on(async {
        let store = zt_store::Store::open(location.to_str().unwrap()).await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let session = store
                .create_session(&sign_in(sub, now() + 4 * 3600), now())
                .await
                .unwrap()
                .session;
            store
                .start_refresh_family(&session.id, "web", "openid", None, now())
                .await
                .unwrap()
                .unwrap();
            ids.push(session.id);
        }
        ids
    });
    let listed = json(&server, &["session", "list", "--user", "alice"]);
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 2, "{listed}");
    assert!(listed["sessions"][0]["revoked_at"].is_null());
    assert_eq!(ok(&server, &["user", "credentials", "alice"]), "no credentials\n");

    ok(&server, &["user", "disable", "alice"]);
    let listed = json(&server, &["session", "list"]);
    for session in listed["sessions"].as_array().unwrap() {
        assert!(session["revoked_at"].is_u64(), "{session}");
        assert_eq!(session["revoke_reason"], "user disabled");
    }
    let families = block_on(async {
        let store = zt_store::Store::open(location.to_str().unwrap()).await.unwrap();
        let mut all = Vec::new();
        for id in &sessions {
            all.extend(store.refresh_families(id).await.unwrap());
        }
        all
    });
    assert_eq!(families.len(), 2);
    assert!(families.iter().all(|f| f.revoked_at.is_some()), "{families:?}");
    assert_failure(
        &zt(&server, &["user", "invite", "alice"]),
        1,
        &[r#"user "alice" is disabled"#],
    );

    // Revoking by session and by user.
    ok(&server, &["user", "enable", "alice"]);
    let bob = json(&server, &["user", "add", "bob", "--email", "bob@example.org"]);
    let bob_session = block_on(async {
        let store = zt_store::Store::open(location.to_str().unwrap()).await.unwrap();
        let sub = bob["sub"].as_str().unwrap();
        store
            .create_session(&sign_in(sub, now() + 3600), now())
            .await
            .unwrap();
        store
            .create_session(&sign_in(sub, now() + 3600), now())
            .await
            .unwrap()
            .session
            .id
    });
    let revoked = json(&server, &["session", "revoke", &bob_session]);
    assert!(revoked["revoked_at"].is_u64(), "{revoked}");
    assert_eq!(
        ok(&server, &["session", "revoke", "--user", "bob"]),
        "Revoked 1 session(s) of bob\n"
    );
    assert_failure(&zt(&server, &["session", "revoke"]), 2, &["--user"]);
    assert_failure(
        &zt(&server, &["session", "revoke", "nope"]),
        1,
        &[r#"session "nope" not found"#],
    );
    assert_failure(
        &zt(&server, &["user", "credential", "revoke", "nope"]),
        1,
        &[r#"credential "nope" not found"#],
    );
}

/// What a sign-in with a passkey would establish, ending at `expires_at`.
fn sign_in(sub: &str, expires_at: u64) -> zt_store::SignIn {
    zt_store::SignIn {
        sub: sub.to_owned(),
        expires_at,
        amr: vec!["hwk".into(), "user".into()],
        acr: "urn:zt:acr:aal2".into(),
        source_ip: "127.0.0.1".into(),
    }
}
