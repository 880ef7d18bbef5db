//! The datastore's behaviour, run on a real SQLite file and on a real PostgreSQL
//! server (`ZT_TEST_POSTGRES_URL`; skipped loudly when unset, required by scripts/test).

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

use std::time::{Duration, Instant};

use zt_identity::SpiffeId;
use zt_store::{
    ClientKind, EntrySpec, GrantType, ModelError, NewClient, NewCredential, NewUser, RedirectUri, Selector,
    Store, StoreError, TokenProblem,
};

const NOW: u64 = 1_800_000_000;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn spec(spiffe_id: &str, selectors: &[&str]) -> EntrySpec {
    EntrySpec {
        spiffe_id: id(spiffe_id),
        parent_id: id("spiffe://example.org/k8s-node"),
        selectors: selectors.iter().map(|s| Selector::parse(s).unwrap()).collect(),
        x509_ttl: 3600,
        jwt_ttl: 300,
        dns_names: vec![],
        admin: false,
        node: false,
        expires_at: None,
        hint: None,
    }
}

fn payment() -> EntrySpec {
    spec(
        "spiffe://example.org/payment",
        &["k8s:ns:production", "k8s:sa:payment-service"],
    )
}

async fn sqlite(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("zt.db").to_str().unwrap())
        .await
        .unwrap()
}

/// Runs each scenario once on SQLite and once on PostgreSQL.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                super::$scenario(super::sqlite(&dir).await).await;
            }

            #[tokio::test]
            async fn postgres() {
                let test = concat!(stringify!($scenario), "::postgres");
                if let Some(url) = zt_testkit::postgres_database(test).await {
                    super::$scenario(zt_store::Store::open(&url).await.unwrap()).await;
                }
            }
        }
    )*};
}

on_both_backends!(
    device_codes_wait_for_a_person_then_redeem_once,
    entry_lifecycle,
    duplicate_entries_are_refused,
    stale_revision_loses_no_update,
    concurrent_writers_one_wins,
    join_tokens_work_once,
    join_token_race_has_one_winner,
    change_feed_records_every_write,
    invalid_specs_are_refused,
    policy_versions_are_immutable_and_announced,
    shipped_decisions_must_continue_their_chain,
    the_witness_pins_a_key_per_source_and_never_goes_back,
    users_have_a_stable_random_sub,
    groups_and_their_members,
    disabling_a_user_revokes_its_sessions_and_families,
    deleting_a_user_removes_everything_of_theirs,
    invites_work_once_and_only_for_enabled_users,
    credentials_are_listed_and_revoked,
    an_invite_enrolls_one_credential_even_in_a_race,
    credential_use_is_recorded,
    clients_keep_only_a_hash_of_their_secret,
    clients_are_checked_before_they_are_stored,
    people_writes_are_in_the_change_feed,
    codes_are_single_use_and_a_replay_revokes_what_they_issued,
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    rotations_committed_together_apply_in_order,
    passwords_are_hashed_and_checked,
    logout_notices_go_to_the_clients_of_the_session_once,
);

/// Four chained decision records, as JSON lines of a proxy's log.
fn decision_lines() -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let record = |path: &str| zt_audit::Record {
        seq: 0,
        time_ms: 1_700_000_000_000,
        id: "id".into(),
        source_principal: None,
        source_ip: None,
        destination: "production/billing".into(),
        port: None,
        protocol: "http".into(),
        method: Some("GET".into()),
        host: None,
        path: Some(path.into()),
        decision: "DENY".into(),
        mode: "enforce".into(),
        policy: None,
        reason: "r".into(),
        policy_version: "v1".into(),
        eval_ns: 1,
        dry_run: None,
        audit: None,
        query: None,
        input: None,
        result: None,
        revision: None,
        request_principal: None,
        request_claims: None,
        prev: String::new(),
        hash: String::new(),
    };
    zt_audit::Writer::open(&path)
        .unwrap()
        .append(["/a", "/b", "/c", "/d"].map(record))
        .unwrap();
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn shipped_decisions_must_continue_their_chain(store: Store) {
    let lines = decision_lines();
    let source = "spiffe://example.org/ns/production/sa/billing";
    assert_eq!(store.append_decisions(source, &lines[..2]).await.unwrap(), 2);
    // A retried batch overlapping what is stored: the stored part is skipped.
    assert_eq!(store.append_decisions(source, &lines[1..3]).await.unwrap(), 3);
    // A gap, or an edited record: refused, and nothing of the batch is kept.
    let gap = store.append_decisions("other", &lines[1..2]).await.unwrap_err();
    assert!(gap.to_string().contains("sequence 2 where 1 was due"), "{gap}");
    let edited = lines[3].replace("\"/d\"", "\"/x\"");
    let err = store.append_decisions(source, &[edited]).await.unwrap_err();
    assert!(err.to_string().contains("edited"), "{err}");
    assert_eq!(store.append_decisions(source, &lines[3..]).await.unwrap(), 4);
    let stored = store.decisions(("", 0), 100).await.unwrap();
    assert_eq!(stored.len(), 4);
    assert!(stored.iter().all(|(s, _)| s == source));
    assert_eq!(stored[3].1, lines[3]);
    // Paging continues after the last (source, seq) seen.
    assert_eq!(store.decisions((source, 2), 100).await.unwrap().len(), 2);
}

async fn the_witness_pins_a_key_per_source_and_never_goes_back(store: Store) {
    // One witness key per datastore: the first stored is every later caller's.
    let first = store.witness_key("PRIVATE+KEY+first").await.unwrap();
    assert_eq!(first, "PRIVATE+KEY+first");
    assert_eq!(store.witness_key("PRIVATE+KEY+second").await.unwrap(), first);

    // Trust on first use: the first key presented is pinned, a later one is not.
    let source = "spiffe://example.org/ns/production/sa/billing";
    let pinned = store.pin_source_key(source, "log-key-a").await.unwrap();
    assert_eq!(
        (pinned.verifier_key.as_str(), pinned.witnessed_size),
        ("log-key-a", 0)
    );
    let again = store.pin_source_key(source, "log-key-b").await.unwrap();
    assert_eq!(again.verifier_key, "log-key-a");
    assert_eq!(
        store
            .pin_source_key("spiffe://example.org/other", "log-key-b")
            .await
            .unwrap()
            .verifier_key,
        "log-key-b"
    );

    // The witnessed size only grows, and only under the pinned key.
    assert!(store.record_witnessed(source, "log-key-a", 3).await.unwrap());
    assert!(store.record_witnessed(source, "log-key-a", 3).await.unwrap());
    assert!(!store.record_witnessed(source, "log-key-a", 2).await.unwrap());
    assert!(!store.record_witnessed(source, "log-key-b", 5).await.unwrap());
    assert_eq!(store.pin_source_key(source, "x").await.unwrap().witnessed_size, 3);

    // The tree over the stored records is the writer's.
    let lines = decision_lines();
    store.append_decisions(source, &lines[..3]).await.unwrap();
    let mut expected = zt_audit::merkle::Frontier::default();
    for line in &lines[..2] {
        let record: zt_audit::Record = serde_json::from_str(line).unwrap();
        expected.push(&record.leaf().unwrap());
    }
    let tree = store.decision_tree(source, 2).await.unwrap().unwrap();
    assert_eq!((tree.size(), tree.root()), (2, expected.root()));
    assert!(store.decision_tree(source, 4).await.unwrap().is_none());
    assert_eq!(
        store.decision_tree(source, 0).await.unwrap().unwrap().root(),
        zt_audit::merkle::empty_root()
    );

    // An operator forgets the key: the next one presented is pinned, from size 0.
    assert_eq!(
        store.forget_source_key(source).await.unwrap().as_deref(),
        Some("log-key-a")
    );
    assert_eq!(store.forget_source_key(source).await.unwrap(), None);
    let repinned = store.pin_source_key(source, "log-key-b").await.unwrap();
    assert_eq!(
        (repinned.verifier_key.as_str(), repinned.witnessed_size),
        ("log-key-b", 0)
    );
}

async fn policy_versions_are_immutable_and_announced(store: Store) {
    use zt_store::PolicyFile;
    let file = |name: &str, text: &str| PolicyFile {
        name: name.into(),
        text: text.into(),
    };
    assert_eq!(store.latest_policies().await.unwrap(), None);
    let before = store.latest_change().await.unwrap();
    let (first, new) = store
        .store_policies(vec![file("b.yaml", "b: 1"), file("a.yaml", "a: 1")], 100)
        .await
        .unwrap();
    assert!(new);
    assert_eq!(first.version, 1);
    assert_eq!(first.files[0].name, "a.yaml", "files are kept sorted");
    let changes = store.changes_since(before, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].kind.as_str(), changes[0].subject.as_str()),
        ("policy", "1")
    );
    // The same set again (in another order) is no new version.
    let (same, new) = store
        .store_policies(vec![file("a.yaml", "a: 1"), file("b.yaml", "b: 1")], 200)
        .await
        .unwrap();
    assert!(!new);
    assert_eq!(same, first);
    let (second, new) = store
        .store_policies(vec![file("a.yaml", "a: 2")], 300)
        .await
        .unwrap();
    assert!(new);
    assert_eq!(second.version, 2);
    assert_ne!(second.digest, first.digest);
    assert_eq!(store.latest_policies().await.unwrap(), Some(second));
    // Older versions stay as they were.
    assert_eq!(store.policy_version(1).await.unwrap(), Some(first));
    assert_eq!(store.policy_version(3).await.unwrap(), None);
}

async fn entry_lifecycle(store: Store) {
    let created = store.create_entry(payment(), NOW).await.unwrap();
    assert_eq!(created.revision, 1);
    assert_eq!(store.entry(&created.id).await.unwrap(), Some(created.clone()));
    assert_eq!(store.count_entries().await.unwrap(), 1);

    let other = store
        .create_entry(
            spec("spiffe://example.org/billing", &["k8s:ns:production"]),
            NOW + 1,
        )
        .await
        .unwrap();
    let parent = id("spiffe://example.org/k8s-node");
    assert_eq!(store.list_entries(None, Some(&parent)).await.unwrap().len(), 2);
    assert_eq!(
        store
            .list_entries(Some(&id("spiffe://example.org/billing")), None)
            .await
            .unwrap(),
        vec![other.clone()]
    );
    assert!(
        store
            .list_entries(None, Some(&id("spiffe://example.org/x")))
            .await
            .unwrap()
            .is_empty()
    );

    let mut changed = created.spec.clone();
    changed.x509_ttl = 600;
    let updated = store
        .update_entry(&created.id, 1, changed, NOW + 2)
        .await
        .unwrap();
    assert_eq!(
        (updated.revision, updated.spec.x509_ttl, updated.updated_at),
        (2, 600, NOW + 2)
    );
    assert_eq!(updated.created_at, NOW);

    let deleted = store.delete_entry(&created.id, NOW + 3).await.unwrap();
    assert_eq!(deleted, updated);
    assert_eq!(store.entry(&created.id).await.unwrap(), None);
    assert!(matches!(
        store.delete_entry(&created.id, NOW).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.update_entry(&created.id, 2, payment(), NOW).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.count_entries().await.unwrap(), 1);
}

async fn duplicate_entries_are_refused(store: Store) {
    store.create_entry(payment(), NOW).await.unwrap();
    // The same selectors in another order are the same entry.
    let reordered = spec(
        "spiffe://example.org/payment",
        &["k8s:sa:payment-service", "k8s:ns:production"],
    );
    let err = store.create_entry(reordered, NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("spiffe://example.org/payment"), "{err}");
    // Other selectors make another entry.
    store
        .create_entry(spec("spiffe://example.org/payment", &["k8s:ns:staging"]), NOW)
        .await
        .unwrap();
    // Updating one into a copy of another is refused too.
    let third = store
        .create_entry(spec("spiffe://example.org/c", &["unix:uid:1"]), NOW)
        .await
        .unwrap();
    let err = store
        .update_entry(&third.id, 1, payment(), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert_eq!(store.count_entries().await.unwrap(), 3);
}

async fn stale_revision_loses_no_update(store: Store) {
    let entry = store.create_entry(payment(), NOW).await.unwrap();
    let mut first = entry.spec.clone();
    first.jwt_ttl = 60;
    store.update_entry(&entry.id, 1, first, NOW).await.unwrap();
    let mut second = entry.spec.clone();
    second.jwt_ttl = 120;
    let err = store.update_entry(&entry.id, 1, second, NOW).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::StaleRevision {
                expected: 1,
                current: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.entry(&entry.id).await.unwrap().unwrap().spec.jwt_ttl, 60);
}

async fn concurrent_writers_one_wins(store: Store) {
    let entry = store.create_entry(payment(), NOW).await.unwrap();
    let writers = (0..8u64).map(|i| {
        let store = store.clone();
        let (id, mut spec) = (entry.id.clone(), entry.spec.clone());
        spec.jwt_ttl = 100 + i;
        tokio::spawn(async move { store.update_entry(&id, 1, spec, NOW).await })
    });
    let mut wins = 0;
    for writer in writers.collect::<Vec<_>>() {
        match writer.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::StaleRevision { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.entry(&entry.id).await.unwrap().unwrap().revision, 2);
}

async fn join_tokens_work_once(store: Store) {
    let agent = id("spiffe://example.org/agent/node-1");
    let token = store
        .create_join_token(Some(&agent), Duration::from_secs(600), NOW)
        .await
        .unwrap();
    assert!(token.len() >= 43, "256-bit token");
    let grant = store.consume_join_token(&token, NOW + 1).await.unwrap();
    assert_eq!(grant.spiffe_id, Some(agent));
    let replay = store.consume_join_token(&token, NOW + 2).await.unwrap_err();
    assert!(
        matches!(replay, StoreError::JoinToken(TokenProblem::Used)),
        "{replay}"
    );

    let short = store
        .create_join_token(None, Duration::from_secs(60), NOW)
        .await
        .unwrap();
    let expired = store.consume_join_token(&short, NOW + 60).await.unwrap_err();
    assert!(
        matches!(expired, StoreError::JoinToken(TokenProblem::Expired)),
        "{expired}"
    );

    let unknown = store.consume_join_token("not-a-token", NOW).await.unwrap_err();
    assert!(
        matches!(unknown, StoreError::JoinToken(TokenProblem::Unknown)),
        "{unknown}"
    );
}

async fn join_token_race_has_one_winner(store: Store) {
    let token = store
        .create_join_token(None, Duration::from_secs(600), NOW)
        .await
        .unwrap();
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (store, token) = (store.clone(), token.clone());
            tokio::spawn(async move { store.consume_join_token(&token, NOW).await })
        })
        .collect();
    let mut wins = 0;
    for racer in racers {
        if racer.await.unwrap().is_ok() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
}

async fn change_feed_records_every_write(store: Store) {
    let start = store.latest_change().await.unwrap();
    let mut watch = store.watch_changes();
    watch.borrow_and_update();
    let entry = store.create_entry(payment(), NOW).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .unwrap()
        .unwrap();
    store.update_entry(&entry.id, 1, payment(), NOW).await.unwrap();
    store.delete_entry(&entry.id, NOW).await.unwrap();
    let changes = store.changes_since(start, 100).await.unwrap();
    assert_eq!(changes.len(), 3);
    assert!(changes.iter().all(|c| c.kind == "entry" && c.subject == entry.id));
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        store.changes_since(changes[1].seq, 100).await.unwrap(),
        changes[2..].to_vec()
    );
    assert_eq!(store.changes_since(start, 1).await.unwrap().len(), 1);
}

async fn invalid_specs_are_refused(store: Store) {
    let err = store
        .create_entry(spec("spiffe://example.org/a", &[]), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid(ModelError::NoSelectors)),
        "{err}"
    );
    let mut foreign = payment();
    foreign.parent_id = id("spiffe://other.org/node");
    let err = store.create_entry(foreign, NOW).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid(ModelError::ForeignParent { .. })),
        "{err}"
    );
    assert_eq!(store.count_entries().await.unwrap(), 0);
    assert_eq!(store.latest_change().await.unwrap(), 0, "nothing half-written");
}

#[tokio::test]
async fn sqlite_reopens_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let entry = sqlite(&dir).await.create_entry(payment(), NOW).await.unwrap();
    let reopened = sqlite(&dir).await;
    assert_eq!(reopened.entry(&entry.id).await.unwrap(), Some(entry));
    assert_eq!(reopened.backend(), zt_store::Backend::Sqlite);
}

#[tokio::test]
async fn bad_locations_are_refused() {
    let err = Store::open("").await.unwrap_err();
    assert!(matches!(err, StoreError::Location(_)), "{err}");
    let err = Store::open("/no/such/dir/zt.db").await.unwrap_err();
    assert!(matches!(err, StoreError::File(_)), "{err}");
    assert!(
        err.to_string().starts_with("datastore /no/such/dir/zt.db: "),
        "{err}"
    );
}

/// The SQLite file and the journals SQLite makes beside it are 0600 whatever
/// the umask, and a file left looser (by an older zt, or by hand) is tightened.
#[tokio::test]
async fn sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zt.db");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = Store::open(path.to_str().unwrap()).await.unwrap();
    store.create_entry(payment(), NOW).await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("zt.db{suffix}"));
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

/// Two servers on one PostgreSQL: a write through one wakes the other's watchers.
/// The delay is printed (a measurement, not an assertion; see zt bench).
#[tokio::test]
async fn postgres_change_reaches_another_server() {
    let Some(url) = zt_testkit::postgres_database("postgres_change_reaches_another_server").await else {
        return;
    };
    let writer = Store::open(&url).await.unwrap();
    let reader = Store::open(&url).await.unwrap();
    let mut watch = reader.watch_changes();
    watch.borrow_and_update();
    let started = Instant::now();
    let entry = writer.create_entry(payment(), NOW).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .unwrap()
        .unwrap();
    eprintln!("change reached the other server after {:?}", started.elapsed());
    let changes = reader.changes_since(0, 10).await.unwrap();
    assert_eq!(changes.last().map(|c| c.subject.clone()), Some(entry.id));
}

fn new_alice() -> NewUser {
    NewUser {
        name: "alice".into(),
        email: "alice@example.org".into(),
        display_name: Some("Alice Liddell".into()),
        groups: vec![],
    }
}

fn web_client(kind: ClientKind) -> NewClient {
    NewClient {
        client_id: "web".into(),
        kind,
        jwks: None,
        redirect_uris: vec![RedirectUri::parse("https://app.example.org/callback").unwrap()],
        grant_types: vec![],
        backchannel_logout_uri: None,
        backchannel_logout_session_required: false,
    }
}

async fn users_have_a_stable_random_sub(store: Store) {
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    assert_eq!(alice.sub.len(), 32, "128 bits, hex: {}", alice.sub);
    assert!(alice.sub.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(!alice.sub.contains("alice"));
    assert_eq!(alice.display_name, "Alice Liddell");
    assert!(!alice.disabled);
    let bob = store
        .create_user(
            &NewUser {
                name: "bob".into(),
                email: "bob@example.org".into(),
                ..NewUser::default()
            },
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(bob.display_name, "bob", "the name by default");
    assert_ne!(alice.sub, bob.sub);
    assert_eq!(store.user("alice").await.unwrap(), alice);
    let names: Vec<_> = store.users().await.unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["alice", "bob"]);

    let err = store.create_user(&new_alice(), NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { what: "user", .. }), "{err}");
    assert_eq!(err.to_string(), r#"user "alice" already exists"#);

    let disabled = store.disable_user("alice", NOW + 1).await.unwrap();
    assert!(disabled.disabled);
    assert_eq!(disabled.sub, alice.sub, "the sub never changes");
    let enabled = store.enable_user("alice", NOW + 2).await.unwrap();
    assert!(!enabled.disabled);
    assert_eq!(enabled.updated_at, NOW + 2);

    for (name, email, field) in [
        ("", "a@b", "name"),
        ("-lead", "a@b", "name"),
        ("has space", "a@b", "name"),
        ("carol", "no-at-sign", "email"),
        ("carol", "two@@example.org", "email"),
        ("carol", "@example.org", "email"),
    ] {
        let user = NewUser {
            name: name.into(),
            email: email.into(),
            ..NewUser::default()
        };
        let err = store.create_user(&user, NOW).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidValue { field: f, .. } if *f == field),
            "{name} {email}: {err}"
        );
    }
    let err = store.user("nobody").await.unwrap_err();
    assert_eq!(err.to_string(), r#"user "nobody" not found"#);
}

async fn groups_and_their_members(store: Store) {
    store.create_group("admins", NOW).await.unwrap();
    store.create_group("staff", NOW).await.unwrap();
    let err = store.create_group("staff", NOW).await.unwrap_err();
    assert_eq!(err.to_string(), r#"group "staff" already exists"#);

    let mut new = new_alice();
    new.groups = vec!["staff".into(), "admins".into(), "staff".into()];
    let alice = store.create_user(&new, NOW).await.unwrap();
    assert_eq!(alice.groups, ["admins", "staff"]);

    let mut ghost = alice_named("ghost");
    ghost.groups = vec!["no-such-group".into()];
    let err = store.create_user(&ghost, NOW).await.unwrap_err();
    assert_eq!(err.to_string(), r#"group "no-such-group" not found"#);
    assert!(store.user("ghost").await.is_err(), "nothing half-written");

    store.create_user(&alice_named("bob"), NOW).await.unwrap();
    store.add_member("staff", "bob", NOW).await.unwrap();
    store.add_member("staff", "bob", NOW).await.unwrap();
    assert_eq!(store.group_members("staff").await.unwrap(), ["alice", "bob"]);
    let counts: Vec<_> = store
        .groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.name, g.members))
        .collect();
    assert_eq!(counts, [("admins".to_owned(), 1), ("staff".to_owned(), 2)]);

    store.remove_member("staff", "alice", NOW).await.unwrap();
    let err = store.remove_member("staff", "alice", NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert_eq!(store.user("alice").await.unwrap().groups, ["admins"]);

    store.delete_group("admins", NOW).await.unwrap();
    assert!(store.user("alice").await.unwrap().groups.is_empty());
    assert!(store.group_members("admins").await.is_err());
    assert!(store.delete_group("admins", NOW).await.is_err());
}

fn alice_named(name: &str) -> NewUser {
    NewUser {
        name: name.into(),
        email: format!("{name}@example.org"),
        ..NewUser::default()
    }
}

async fn disabling_a_user_revokes_its_sessions_and_families(store: Store) {
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    let bob = store.create_user(&alice_named("bob"), NOW).await.unwrap();
    let first = store
        .create_session(&sign_in(&alice.sub, NOW + 4 * 3600), NOW)
        .await
        .unwrap()
        .session;
    let second = store
        .create_session(&sign_in(&alice.sub, NOW + 4 * 3600), NOW + 1)
        .await
        .unwrap()
        .session;
    let bobs = store
        .create_session(&sign_in(&bob.sub, NOW + 4 * 3600), NOW)
        .await
        .unwrap()
        .session;
    store
        .start_refresh_family(&first.id, "web", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    store
        .start_refresh_family(&second.id, "cli", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    store
        .start_refresh_family(&bobs.id, "web", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    let listed: Vec<_> = store
        .sessions(Some("alice"))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, [second.id.clone(), first.id.clone()], "newest first");
    assert_eq!(store.sessions(None).await.unwrap().len(), 3);

    store.disable_user("alice", NOW + 10).await.unwrap();
    for session in store.sessions(Some("alice")).await.unwrap() {
        assert_eq!(session.revoked_at, Some(NOW + 10));
        assert_eq!(session.revoke_reason.as_deref(), Some("user disabled"));
        for family in store.refresh_families(&session.id).await.unwrap() {
            assert_eq!(family.revoked_at, Some(NOW + 10), "{family:?}");
        }
    }
    let err = store
        .create_session(&sign_in(&alice.sub, NOW + 3600), NOW + 11)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Disabled(_)), "{err}");
    let err = store
        .start_refresh_family(&first.id, "web", "openid", None, NOW + 11)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, zt_store::GrantError::Ended(_)), "{err}");

    // Bob's are untouched; revoking one session revokes its families.
    let family = &store.refresh_families(&bobs.id).await.unwrap()[0];
    assert_eq!(family.revoked_at, None);
    let revoked = store
        .revoke_session(&bobs.id, "operator", NOW + 20)
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(NOW + 20));
    assert_eq!(
        store.refresh_families(&bobs.id).await.unwrap()[0].revoked_at,
        Some(NOW + 20)
    );
    // Revoking again keeps the first time.
    let again = store.revoke_session(&bobs.id, "again", NOW + 30).await.unwrap();
    assert_eq!(again.revoked_at, Some(NOW + 20));
    assert!(store.revoke_session("nope", "x", NOW).await.is_err());

    let carol = store.create_user(&alice_named("carol"), NOW).await.unwrap();
    store
        .create_session(&sign_in(&carol.sub, NOW + 3600), NOW)
        .await
        .unwrap();
    store
        .create_session(&sign_in(&carol.sub, NOW + 3600), NOW)
        .await
        .unwrap();
    assert_eq!(
        store
            .revoke_user_sessions("carol", "operator", NOW + 1)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .revoke_user_sessions("carol", "operator", NOW + 2)
            .await
            .unwrap(),
        0
    );
}

async fn deleting_a_user_removes_everything_of_theirs(store: Store) {
    store.create_group("staff", NOW).await.unwrap();
    let mut new = new_alice();
    new.groups = vec!["staff".into()];
    let alice = store.create_user(&new, NOW).await.unwrap();
    let session = store
        .create_session(&sign_in(&alice.sub, NOW + 3600), NOW)
        .await
        .unwrap()
        .session;
    store
        .start_refresh_family(&session.id, "web", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    store
        .add_credential(&credential(&alice.sub, "cred-1"), NOW)
        .await
        .unwrap();
    let invite = store
        .create_invite("alice", Duration::from_secs(900), NOW)
        .await
        .unwrap();

    let deleted = store.delete_user("alice", NOW).await.unwrap();
    assert_eq!(deleted.sub, alice.sub);
    assert!(store.users().await.unwrap().is_empty());
    assert!(store.sessions(None).await.unwrap().is_empty());
    assert!(store.refresh_families(&session.id).await.unwrap().is_empty());
    assert!(store.group_members("staff").await.unwrap().is_empty());
    let err = store.consume_invite(&invite.token, NOW + 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Invite(TokenProblem::Unknown)), "{err}");
    assert!(store.revoke_credential("cred-1", NOW).await.is_err());
    assert!(store.delete_user("alice", NOW).await.is_err());

    // A new alice is someone else.
    let again = store.create_user(&new, NOW).await.unwrap();
    assert_ne!(again.sub, alice.sub);
}

async fn invites_work_once_and_only_for_enabled_users(store: Store) {
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    let invite = store
        .create_invite("alice", Duration::from_secs(900), NOW)
        .await
        .unwrap();
    assert_eq!(invite.expires_at, NOW + 900);
    assert!(invite.token.len() >= 43, "256 bits, base64url: {}", invite.token);
    assert_eq!(
        store.consume_invite(&invite.token, NOW + 1).await.unwrap(),
        alice.sub
    );
    let err = store.consume_invite(&invite.token, NOW + 2).await.unwrap_err();
    assert!(matches!(err, StoreError::Invite(TokenProblem::Used)), "{err}");

    let late = store
        .create_invite("alice", Duration::from_secs(900), NOW)
        .await
        .unwrap();
    let err = store.consume_invite(&late.token, NOW + 900).await.unwrap_err();
    assert!(matches!(err, StoreError::Invite(TokenProblem::Expired)), "{err}");
    let err = store.consume_invite("forged", NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::Invite(TokenProblem::Unknown)), "{err}");

    let pending = store
        .create_invite("alice", Duration::from_secs(900), NOW)
        .await
        .unwrap();
    store.disable_user("alice", NOW).await.unwrap();
    let err = store.consume_invite(&pending.token, NOW + 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Disabled(_)), "{err}");
    let err = store
        .create_invite("alice", Duration::from_secs(900), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), r#"user "alice" is disabled"#);
    let err = store
        .create_invite("nobody", Duration::from_secs(900), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
}

fn credential(sub: &str, id: &str) -> NewCredential {
    NewCredential {
        id: id.into(),
        sub: sub.into(),
        public_key: "{}".into(),
        aaguid: "00000000-0000-0000-0000-000000000000".into(),
        sign_count: 0,
        backup_eligible: true,
        backed_up: false,
    }
}

async fn credentials_are_listed_and_revoked(store: Store) {
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    assert!(store.credentials("alice").await.unwrap().is_empty());
    store
        .add_credential(&credential(&alice.sub, "cred-1"), NOW)
        .await
        .unwrap();
    store
        .add_credential(&credential(&alice.sub, "cred-2"), NOW + 1)
        .await
        .unwrap();
    let err = store
        .add_credential(&credential(&alice.sub, "cred-1"), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { .. }), "{err}");
    let err = store
        .add_credential(&credential("no-such-sub", "cred-3"), NOW)
        .await
        .unwrap_err();
    assert!(!matches!(err, StoreError::Duplicate { .. }), "{err}");

    let listed = store.credentials("alice").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].user, "alice");
    assert!(listed[0].backup_eligible && !listed[0].backed_up);
    let revoked = store.revoke_credential("cred-1", NOW + 5).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(NOW + 5));
    let again = store.revoke_credential("cred-1", NOW + 6).await.unwrap();
    assert_eq!(again.revoked_at, Some(NOW + 5), "the first revocation stands");
    assert_eq!(store.credentials("alice").await.unwrap()[1].revoked_at, None);
    assert!(store.credentials("nobody").await.is_err());
}

async fn an_invite_enrolls_one_credential_even_in_a_race(store: Store) {
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    let invite = store
        .create_invite("alice", Duration::from_secs(900), NOW)
        .await
        .unwrap();
    assert_eq!(
        store.invite_user(&invite.token, NOW + 1).await.unwrap().sub,
        alice.sub
    );
    let (first, second) = (credential(&alice.sub, "cred-a"), credential(&alice.sub, "cred-b"));
    let (a, b) = tokio::join!(
        store.enroll_credential(&invite.token, &first, NOW + 1),
        store.enroll_credential(&invite.token, &second, NOW + 1),
    );
    assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
    let loser = a.err().or(b.err()).unwrap();
    assert!(
        matches!(
            loser,
            StoreError::Invite(TokenProblem::Used) | StoreError::Database(_)
        ),
        "{loser}"
    );
    assert_eq!(store.credentials("alice").await.unwrap().len(), 1);
    let err = store.invite_user(&invite.token, NOW + 2).await.unwrap_err();
    assert!(matches!(err, StoreError::Invite(TokenProblem::Used)), "{err}");
    let err = store.invite_user("forged", NOW + 2).await.unwrap_err();
    assert!(matches!(err, StoreError::Invite(TokenProblem::Unknown)), "{err}");

    // An invite enrolls only its own user.
    let bob = store
        .create_user(
            &NewUser {
                name: "bob".into(),
                email: "bob@example.com".into(),
                ..NewUser::default()
            },
            NOW,
        )
        .await
        .unwrap();
    let other = store
        .create_invite("alice", Duration::from_secs(900), NOW)
        .await
        .unwrap();
    assert!(
        store
            .enroll_credential(&other.token, &credential(&bob.sub, "cred-c"), NOW + 1)
            .await
            .is_err()
    );
    assert!(store.credentials("bob").await.unwrap().is_empty());
}

async fn credential_use_is_recorded(store: Store) {
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    store
        .add_credential(&credential(&alice.sub, "cred-1"), NOW)
        .await
        .unwrap();
    let stored = store.credential_by_id("cred-1").await.unwrap().unwrap();
    assert_eq!(stored.sub, alice.sub);
    assert_eq!(stored.public_key, "{}");
    assert_eq!(stored.credential.last_used_at, None);
    let used = zt_store::CredentialUse {
        sign_count: 7,
        backed_up: true,
        public_key: r#"{"counter":7}"#.into(),
    };
    store
        .record_credential_use("cred-1", &used, NOW + 3)
        .await
        .unwrap();
    let stored = store.credential_by_id("cred-1").await.unwrap().unwrap();
    assert_eq!(stored.credential.sign_count, 7);
    assert!(stored.credential.backed_up);
    assert_eq!(stored.credential.last_used_at, Some(NOW + 3));
    assert_eq!(stored.public_key, used.public_key);
    assert!(store.credential_by_id("nope").await.unwrap().is_none());
    store.revoke_credential("cred-1", NOW + 4).await.unwrap();
    assert!(
        store
            .record_credential_use("cred-1", &used, NOW + 5)
            .await
            .is_err()
    );
}

async fn clients_keep_only_a_hash_of_their_secret(store: Store) {
    let created = store
        .create_client(&web_client(ClientKind::Secret), NOW)
        .await
        .unwrap();
    let secret = created.secret.unwrap();
    assert!(secret.len() >= 43, "256 bits, base64url: {secret}");
    assert_eq!(
        created.client.grant_types,
        [GrantType::AuthorizationCode, GrantType::RefreshToken]
    );
    assert!(store.verify_client_secret("web", &secret).await.unwrap());
    assert!(!store.verify_client_secret("web", "wrong").await.unwrap());
    assert!(!store.verify_client_secret("nobody", &secret).await.unwrap());
    assert_eq!(store.client("web").await.unwrap(), created.client);
    let err = store
        .create_client(&web_client(ClientKind::Public), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), r#"client "web" already exists"#);

    let mut public = web_client(ClientKind::Public);
    public.client_id = "spa".into();
    let public = store.create_client(&public, NOW).await.unwrap();
    assert!(public.secret.is_none());
    assert!(!store.verify_client_secret("spa", "").await.unwrap());
    let ids: Vec<_> = store
        .clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, ["spa", "web"]);

    store.delete_client("web", NOW).await.unwrap();
    assert!(!store.verify_client_secret("web", &secret).await.unwrap());
    assert!(store.client("web").await.is_err());
}

async fn clients_are_checked_before_they_are_stored(store: Store) {
    let mut jwt = web_client(ClientKind::PrivateKeyJwt);
    let err = store.create_client(&jwt, NOW).await.unwrap_err();
    assert!(err.to_string().contains("needs its JWK Set"), "{err}");
    jwt.jwks = Some(r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"abc"}]}"#.into());
    let created = store.create_client(&jwt, NOW).await.unwrap();
    assert!(created.secret.is_none());
    assert!(created.client.jwks.is_some());

    let mut public = web_client(ClientKind::Public);
    public.client_id = "cli".into();
    public.grant_types = vec![GrantType::ClientCredentials];
    let err = store.create_client(&public, NOW).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("public client cannot use client_credentials"),
        "{err}"
    );

    let mut nowhere = web_client(ClientKind::Secret);
    nowhere.client_id = "svc".into();
    nowhere.redirect_uris.clear();
    let err = store.create_client(&nowhere, NOW).await.unwrap_err();
    assert!(err.to_string().contains("at least one redirect URI"), "{err}");
    nowhere.grant_types = vec![GrantType::ClientCredentials];
    store.create_client(&nowhere, NOW).await.unwrap();

    let mut bad_id = web_client(ClientKind::Public);
    bad_id.client_id = "has space".into();
    assert!(store.create_client(&bad_id, NOW).await.is_err());
    assert_eq!(store.clients().await.unwrap().len(), 2);
}

async fn people_writes_are_in_the_change_feed(store: Store) {
    let start = store.latest_change().await.unwrap();
    store.create_group("staff", NOW).await.unwrap();
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    let session = store
        .create_session(&sign_in(&alice.sub, NOW + 3600), NOW)
        .await
        .unwrap()
        .session;
    store.disable_user("alice", NOW).await.unwrap();
    store
        .create_client(&web_client(ClientKind::Public), NOW)
        .await
        .unwrap();
    let kinds: Vec<_> = store
        .changes_since(start, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c.subject))
        .collect();
    let expected = [
        ("group", "staff"),
        ("user", alice.sub.as_str()),
        ("session", session.id.as_str()),
        ("session", session.id.as_str()),
        ("user", alice.sub.as_str()),
        ("client", "web"),
    ];
    assert_eq!(
        kinds,
        expected.map(|(k, s)| (k.to_owned(), s.to_owned())).to_vec()
    );
    // A refused write records nothing.
    let before = store.latest_change().await.unwrap();
    assert!(store.create_group("staff", NOW).await.is_err());
    assert_eq!(store.latest_change().await.unwrap(), before);
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

fn code_for(session: &str, expires_at: u64) -> zt_store::NewCode {
    zt_store::NewCode {
        client_id: "web".into(),
        session_id: session.into(),
        redirect_uri: "https://app.example/cb".into(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        scope: "openid".into(),
        nonce: Some("n".into()),
        expires_at,
    }
}

async fn codes_are_single_use_and_a_replay_revokes_what_they_issued(store: Store) {
    use zt_store::{GrantError, TokenProblem};
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    let session = store
        .create_session(&sign_in(&alice.sub, NOW + 3600), NOW)
        .await
        .unwrap()
        .session;
    let code = store
        .create_code(&code_for(&session.id, NOW + 60), NOW)
        .await
        .unwrap();
    let redeemed = store.redeem_code(&code, NOW + 1).await.unwrap().unwrap();
    assert_eq!(redeemed.session.id, session.id);
    assert_eq!(redeemed.nonce.as_deref(), Some("n"));
    let first = store
        .start_refresh_family(&session.id, "web", "openid", Some(&code), NOW + 1)
        .await
        .unwrap()
        .unwrap();
    // The replay fails and revokes the family the first redemption started.
    let replay = store.redeem_code(&code, NOW + 2).await.unwrap().unwrap_err();
    assert_eq!(
        replay,
        GrantError::Token {
            what: "authorization code",
            problem: TokenProblem::Used
        }
    );
    let family = &store.refresh_families(&session.id).await.unwrap()[0];
    assert_eq!(family.reason.as_deref(), Some("authorization code replayed"));
    let refused = store
        .rotate_refresh_token(&first.token, "web", None, 10, NOW + 3)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(refused, GrantError::Ended(_)), "{refused}");
    // Expired and unknown codes.
    let late = store
        .create_code(&code_for(&session.id, NOW + 60), NOW)
        .await
        .unwrap();
    let expired = store.redeem_code(&late, NOW + 60).await.unwrap().unwrap_err();
    assert!(
        matches!(
            expired,
            GrantError::Token {
                problem: TokenProblem::Expired,
                ..
            }
        ),
        "{expired}"
    );
    let unknown = store.redeem_code("forged", NOW).await.unwrap().unwrap_err();
    assert!(
        matches!(
            unknown,
            GrantError::Token {
                problem: TokenProblem::Unknown,
                ..
            }
        ),
        "{unknown}"
    );
    // A code of a session revoked since is worth nothing.
    let orphan = store
        .create_code(&code_for(&session.id, NOW + 60), NOW)
        .await
        .unwrap();
    store
        .revoke_session(&session.id, "operator", NOW + 4)
        .await
        .unwrap();
    let ended = store.redeem_code(&orphan, NOW + 5).await.unwrap().unwrap_err();
    assert!(matches!(ended, GrantError::Ended(_)), "{ended}");
}

async fn refresh_tokens_rotate_and_reuse_revokes_the_family(store: Store) {
    use zt_store::GrantError;
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    let session = store
        .create_session(&sign_in(&alice.sub, NOW + 3600), NOW)
        .await
        .unwrap()
        .session;
    let first = store
        .start_refresh_family(&session.id, "web", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.user.name, "alice");
    // A wider scope is refused before the token is spent.
    let wider = store
        .rotate_refresh_token(&first.token, "web", Some("openid email"), 10, NOW + 50)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(wider, GrantError::WiderScope);
    // Rotation: a new token each time, the old one spent.
    let second = store
        .rotate_refresh_token(&first.token, "web", None, 10, NOW + 100)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(second.token, first.token);
    assert!(!second.retried);
    // Another client cannot use it.
    let wrong = store
        .rotate_refresh_token(&second.token, "cli", None, 10, NOW + 101)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(wrong, GrantError::WrongClient);
    // A retry of the spent token inside the grace (a lost response) works, a
    // bounded number of times.
    for _ in 0..zt_store::MAX_GRACE_RETRIES {
        let retry = store
            .rotate_refresh_token(&first.token, "web", None, 10, NOW + 105)
            .await
            .unwrap()
            .unwrap();
        assert!(retry.retried);
    }
    let reused = store
        .rotate_refresh_token(&first.token, "web", None, 10, NOW + 106)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(reused, GrantError::Reused { .. }), "{reused}");
    // The legitimate holder's next refresh fails: the whole family is revoked.
    let holder = store
        .rotate_refresh_token(&second.token, "web", None, 10, NOW + 107)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(holder, GrantError::Ended(_)), "{holder}");
    assert_eq!(
        store.refresh_families(&session.id).await.unwrap()[0]
            .reason
            .as_deref(),
        Some("refresh token reused")
    );

    // After the grace, one reuse is enough.
    let other = store
        .start_refresh_family(&session.id, "web", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    store
        .rotate_refresh_token(&other.token, "web", None, 10, NOW + 200)
        .await
        .unwrap()
        .unwrap();
    let late = store
        .rotate_refresh_token(&other.token, "web", None, 10, NOW + 211)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(late, GrantError::Reused { .. }), "{late}");

    // Without a grace, a reuse in the very second of the rotation is enough.
    let strict = store
        .start_refresh_family(&session.id, "web", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    store
        .rotate_refresh_token(&strict.token, "web", None, 0, NOW + 300)
        .await
        .unwrap()
        .unwrap();
    let at_once = store
        .rotate_refresh_token(&strict.token, "web", None, 0, NOW + 300)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(at_once, GrantError::Reused { .. }), "{at_once}");

    // Revocation by the client, and the session's end.
    let third = store
        .start_refresh_family(&session.id, "web", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .revoke_refresh_token(&third.token, "cli", NOW + 300)
            .await
            .unwrap()
            .is_none()
    );
    let revoked = store
        .revoke_refresh_token(&third.token, "web", NOW + 300)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.reason.as_deref(), Some("revoked by the client"));
    let fourth = store
        .start_refresh_family(&session.id, "web", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    let past_end = store
        .rotate_refresh_token(&fourth.token, "web", None, 10, NOW + 3600)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(past_end, GrantError::Ended(_)), "{past_end}");
    assert!(store.prune_grants(0, NOW + 7200).await.unwrap() > 0);
}

async fn passwords_are_hashed_and_checked(store: Store) {
    store.create_user(&new_alice(), NOW).await.unwrap();
    assert!(
        store
            .check_password("alice", "anything at all")
            .await
            .unwrap()
            .is_none()
    );
    store
        .set_password("alice", Some("correct horse"), NOW)
        .await
        .unwrap();
    assert_eq!(
        store
            .check_password("alice", "correct horse")
            .await
            .unwrap()
            .unwrap()
            .name,
        "alice"
    );
    assert!(
        store
            .check_password("alice", "correct horsE")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .check_password("nobody", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
    let short = store.set_password("alice", Some("short"), NOW).await.unwrap_err();
    assert!(short.to_string().contains("password"), "{short}");
    store.disable_user("alice", NOW).await.unwrap();
    assert!(
        store
            .check_password("alice", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
    store.enable_user("alice", NOW).await.unwrap();
    store.set_password("alice", None, NOW).await.unwrap();
    assert!(
        store
            .check_password("alice", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
}

async fn device_codes_wait_for_a_person_then_redeem_once(store: Store) {
    use zt_store::DevicePoll;
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    let session = store
        .create_session(&sign_in(&alice.sub, NOW + 3600), NOW)
        .await
        .unwrap()
        .session;
    let code = store
        .create_device_code("cli", "openid", NOW + 600, 5, NOW)
        .await
        .unwrap();
    assert_eq!(code.device_code.len(), 43, "256 bits, base64url");
    assert_eq!(code.user_code.len(), 9);
    assert_eq!(&code.user_code[4..5], "-");

    let request = store
        .device_request(&code.user_code.to_lowercase(), NOW + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (request.client_id.as_str(), request.scope.as_str()),
        ("cli", "openid")
    );
    assert_eq!(store.device_request("BCDF-GHJK", NOW + 1).await.unwrap(), None);

    let poll = |client: &'static str, at: u64| {
        let (store, device_code) = (store.clone(), code.device_code.clone());
        async move { store.poll_device_code(&device_code, client, at).await.unwrap() }
    };
    assert_eq!(poll("cli", NOW + 5).await, DevicePoll::Pending);
    assert_eq!(
        poll("cli", NOW + 7).await,
        DevicePoll::SlowDown,
        "2s after the last poll"
    );
    assert_eq!(
        poll("cli", NOW + 14).await,
        DevicePoll::SlowDown,
        "the interval is 10s now"
    );
    assert_eq!(poll("cli", NOW + 30).await, DevicePoll::Pending);
    assert_eq!(
        poll("web", NOW + 45).await,
        DevicePoll::Invalid,
        "another client's"
    );

    assert!(
        store
            .answer_device_request(&code.user_code, Some(&session.id), NOW + 50)
            .await
            .unwrap()
    );
    assert!(
        !store
            .answer_device_request(&code.user_code, None, NOW + 51)
            .await
            .unwrap(),
        "answered once"
    );
    match poll("cli", NOW + 60).await {
        DevicePoll::Approved {
            scope,
            session: s,
            user,
        } => {
            assert_eq!(
                (scope.as_str(), s.id.as_str(), user.name.as_str()),
                ("openid", session.id.as_str(), "alice")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(poll("cli", NOW + 80).await, DevicePoll::Invalid, "redeemed once");

    // Denied; and expired.
    let denied = store
        .create_device_code("cli", "", NOW + 600, 5, NOW)
        .await
        .unwrap();
    assert!(
        store
            .answer_device_request(&denied.user_code, None, NOW + 1)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .poll_device_code(&denied.device_code, "cli", NOW + 10)
            .await
            .unwrap(),
        DevicePoll::Denied
    );
    let late = store
        .create_device_code("cli", "", NOW + 600, 5, NOW)
        .await
        .unwrap();
    assert_eq!(
        store
            .poll_device_code(&late.device_code, "cli", NOW + 600)
            .await
            .unwrap(),
        DevicePoll::Expired
    );
    assert_eq!(
        store.device_request(&late.user_code, NOW + 600).await.unwrap(),
        None
    );
}

async fn rotations_committed_together_apply_in_order(store: Store) {
    use zt_store::{GrantError, Rotation};
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    let session = store
        .create_session(&sign_in(&alice.sub, NOW + 3600), NOW)
        .await
        .unwrap()
        .session;
    let family = |store: &Store| {
        let store = store.clone();
        let id = session.id.clone();
        async move {
            store
                .start_refresh_family(&id, "web", "openid", None, NOW)
                .await
                .unwrap()
                .unwrap()
                .token
        }
    };
    let (first, second) = (family(&store).await, family(&store).await);
    let rotation = |token| Rotation {
        token,
        client_id: "web",
        scope: None,
    };
    // No grace: the same token twice in one batch is spent, then reused.
    let outcomes = store
        .rotate_refresh_tokens(
            &[
                rotation(&first),
                rotation(&second),
                rotation(&first),
                rotation("forged"),
            ],
            0,
            NOW + 10,
        )
        .await
        .unwrap();
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok(), "{outcomes:?}");
    assert!(
        matches!(outcomes[2], Err(GrantError::Reused { .. })),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[3], Err(GrantError::Token { .. })),
        "{outcomes:?}"
    );
    // The reuse revoked the first family only, and it was committed with the rest.
    let next_of_second = outcomes[1].as_ref().unwrap().token.clone();
    assert!(
        store
            .rotate_refresh_token(&next_of_second, "web", None, 0, NOW + 11)
            .await
            .unwrap()
            .is_ok()
    );
    let next_of_first = outcomes[0].as_ref().unwrap().token.clone();
    let ended = store
        .rotate_refresh_token(&next_of_first, "web", None, 0, NOW + 11)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(ended, GrantError::Ended(_)), "{ended}");
}

async fn logout_notices_go_to_the_clients_of_the_session_once(store: Store) {
    use zt_store::{BackchannelLogoutUri, LogoutCause};
    let alice = store.create_user(&new_alice(), NOW).await.unwrap();
    for (id, uri) in [
        ("web", Some("https://web.example/logout")),
        ("app", Some("http://localhost:9000/logout")),
        ("plain", None),
        ("idle", Some("https://idle.example/logout")),
    ] {
        let mut client = web_client(ClientKind::Public);
        client.client_id = id.into();
        client.backchannel_logout_uri = uri.map(|u| BackchannelLogoutUri::parse(u).unwrap());
        store.create_client(&client, NOW).await.unwrap();
    }
    assert_eq!(
        store
            .client("app")
            .await
            .unwrap()
            .backchannel_logout_uri
            .as_deref(),
        Some("http://localhost:9000/logout")
    );
    let open = |store: &Store| {
        let store = store.clone();
        let sub = alice.sub.clone();
        async move {
            store
                .create_session(&sign_in(&sub, NOW + 3600), NOW)
                .await
                .unwrap()
                .session
                .id
        }
    };
    let session = open(&store).await;
    let other = open(&store).await;
    // web holds a refresh family, app a code, plain a family; idle holds
    // tokens of another session only.
    let issued = store
        .start_refresh_family(&session, "web", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    let mut code = code_for(&session, NOW + 60);
    code.client_id = "app".into();
    store.create_code(&code, NOW).await.unwrap();
    store
        .start_refresh_family(&session, "plain", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    store
        .start_refresh_family(&other, "idle", "openid", None, NOW)
        .await
        .unwrap()
        .unwrap();
    // While the session is open and no family was revoked for theft: nothing.
    assert!(
        store
            .claim_logout_notices(&session, NOW)
            .await
            .unwrap()
            .is_empty()
    );
    // A spent refresh token comes back: its family's client, once.
    let next = store
        .rotate_refresh_token(&issued.token, "web", None, 0, NOW)
        .await
        .unwrap()
        .unwrap();
    drop(next);
    store
        .rotate_refresh_token(&issued.token, "web", None, 0, NOW + 5)
        .await
        .unwrap()
        .unwrap_err();
    let notices = store.claim_logout_notices(&session, NOW + 5).await.unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].client_id, "web");
    assert_eq!(notices[0].cause, LogoutCause::FamilyRevoked);
    assert!(
        store
            .claim_logout_notices(&session, NOW + 5)
            .await
            .unwrap()
            .is_empty()
    );
    // The session is revoked: every client of it with a URI, once; not idle.
    store.revoke_session(&session, "test", NOW + 6).await.unwrap();
    let notices = store.claim_logout_notices(&session, NOW + 6).await.unwrap();
    let clients: Vec<_> = notices.iter().map(|n| n.client_id.as_str()).collect();
    assert_eq!(clients, ["app", "web"]);
    for notice in &notices {
        assert_eq!(notice.sub, alice.sub);
        assert_eq!(notice.session_id, session);
        assert_eq!(notice.cause, LogoutCause::SessionRevoked);
    }
    assert_eq!(notices[0].uri, "http://localhost:9000/logout");
    assert!(
        store
            .claim_logout_notices(&session, NOW + 7)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim_logout_notices("no-such-session", NOW)
            .await
            .unwrap()
            .is_empty()
    );
}
