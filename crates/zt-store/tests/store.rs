//! The datastore's behaviour, run on a real SQLite file and on a real PostgreSQL
//! server (`ZT_TEST_POSTGRES_URL`; skipped loudly when unset, required by scripts/test).

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

use std::time::{Duration, Instant};

use zt_identity::SpiffeId;
use zt_store::{EntrySpec, ModelError, Selector, Store, StoreError, TokenProblem};

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
