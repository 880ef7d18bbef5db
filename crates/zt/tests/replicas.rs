//! Several `zt server` replicas on one PostgreSQL database, as real processes: a
//! change made through one reaches agents attached to another whatever order the
//! servers started in; the change-feed listener survives PostgreSQL dropping its
//! connection, loudly (`/readyz` red meanwhile, the restart counted); replicas
//! racing a CA rotation create one authority, activate it once and serve one
//! bundle.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, UnixTime};
use support::*;
use zt_identity::{Bundle, Purpose};
use zt_testkit::{describe, postgres_query};

const AGENT_ID: &str = "spiffe://example.org/agent/node-1";

/// How long a change may take to reach an agent on another server. The promise
/// is within a second; this bounds the wait on a loaded machine, and is far
/// shorter than "never", which is what a dead listener gives.
const REACH: Duration = Duration::from_secs(5);

/// The change-feed listener's restarts, as `/metrics` exposes them.
const FEED_RESTARTS: &str = "zt_server_task_restarts_total{task=\"change_feed\"}";

/// Creates an entry for the test process's uid under the agent, through `server`.
fn create_workload_entry(server: &ServerProcess, spiffe_id: &str) {
    ok(
        server,
        &[
            "entry",
            "create",
            "--spiffe-id",
            spiffe_id,
            "--parent-id",
            AGENT_ID,
            "--selector",
            &format!("unix:uid:{}", my_uid()),
        ],
    );
}

/// The bundle `server` serves.
fn bundle(server: &ServerProcess) -> Bundle {
    Bundle::parse(ok(server, &["bundle", "show"]).as_bytes(), None).unwrap()
}

/// A bundle of the trust domain holding only `authority`.
fn bundle_of(authority: &CertificateDer<'static>) -> Bundle {
    let pem = zt_identity::x509::to_pem(authority);
    Bundle::parse(pem.as_bytes(), None).unwrap()
}

/// An X.509-SVID minted through `server` for a local key, as its chain.
fn mint(server: &ServerProcess, dir: &Path) -> Vec<CertificateDer<'static>> {
    let _ = std::fs::remove_dir_all(dir);
    ok(
        server,
        &[
            "x509",
            "mint",
            "-spiffeID",
            "spiffe://example.org/minted",
            "--ttl",
            "10m",
            "--write",
            dir.to_str().unwrap(),
        ],
    );
    zt_identity::x509::certificates_from_pem(&std::fs::read(dir.join("svid.pem")).unwrap()).unwrap()
}

fn verifies(chain: &[CertificateDer<'static>], bundle: &Bundle) -> bool {
    zt_identity::verify_x509_svid(chain, bundle, UnixTime::now(), Purpose::ServerAuth).is_ok()
}

/// The database name at the end of a PostgreSQL URL.
fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap().split('?').next().unwrap()
}

/// The server named by `ZT_TEST_POSTGRES_URL` (its own database, not the test's):
/// where the test runs what must not go through the database it disturbs.
fn admin_url() -> String {
    std::env::var("ZT_TEST_POSTGRES_URL").unwrap()
}

/// Polls `/readyz` until its status is `status`, and returns its body.
fn wait_readyz(server: &ServerProcess, status: u16) -> String {
    let start = Instant::now();
    loop {
        let (got, body) = http_get(server.http, "/readyz").unwrap();
        if got == status {
            return body;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "/readyz still {got} ({body:?}), not {status}, after {DEADLINE:?}\n{}",
            server.stderr()
        );
        thread::sleep(POLL);
    }
}

/// Issue 14's report, in every start order: an agent attached to server A gets
/// the SVID of an entry created through server B, and B's write is the last one
/// (no later write through A may wake A up instead).
#[test]
fn changes_reach_agents_on_another_server_in_every_start_order() {
    let tmp = tempfile::tempdir().unwrap();
    for order in ["a-then-b", "b-then-a", "together"] {
        let Some(url) = postgres_database("changes_reach_agents_on_another_server") else {
            return;
        };
        let dir = tmp.path().join(order);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = match order {
            "a-then-b" => {
                let a = ServerProcess::start(&dir.join("a"), Some(&url));
                (a, ServerProcess::start(&dir.join("b"), Some(&url)))
            }
            "b-then-a" => {
                let b = ServerProcess::start(&dir.join("b"), Some(&url));
                (ServerProcess::start(&dir.join("a"), Some(&url)), b)
            }
            _ => {
                let mut a = ServerProcess::spawn(&dir.join("a"), Some(&url));
                let mut b = ServerProcess::spawn(&dir.join("b"), Some(&url));
                a.wait_ready();
                b.wait_ready();
                (a, b)
            }
        };
        // One witness key for every replica, even when they create it together.
        let witness_key = ok(&a, &["audit", "witness-key"]);
        assert!(
            witness_key.starts_with("example.org/zt-server/witness+"),
            "{witness_key}"
        );
        assert_eq!(ok(&b, &["audit", "witness-key"]), witness_key, "{order}");
        let agent_dir = dir.join("agent");
        std::fs::create_dir_all(&agent_dir).unwrap();
        let agent = AgentProcess::start(&a, &agent_dir, AGENT_ID);
        // Through A first: the agent is attested and its sync stream is up.
        create_workload_entry(&a, "spiffe://example.org/first");
        agent.wait_for_x509(&["spiffe://example.org/first"]);

        let created = Instant::now();
        create_workload_entry(&b, "spiffe://example.org/second");
        agent.wait_for_x509_within(
            &["spiffe://example.org/first", "spiffe://example.org/second"],
            REACH,
        );
        eprintln!("{order}: B's entry reached A's agent in {:?}", created.elapsed());
        for server in [&a, &b] {
            assert_eq!(sample(server.http, FEED_RESTARTS), Some(0.0), "{order}");
        }
    }
}

/// PostgreSQL drops the listener's connection, and for a while accepts no new
/// ones: the server says it is not ready and why, counts the restart, comes back
/// by itself, and hears the other server's changes again.
#[test]
fn change_feed_recovers_when_postgres_drops_its_connection() {
    let Some(url) = postgres_database("change_feed_recovers_when_postgres_drops_its_connection") else {
        return;
    };
    let db = database_name(&url).to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let a = ServerProcess::start(&tmp.path().join("a"), Some(&url));
    let b = ServerProcess::start(&tmp.path().join("b"), Some(&url));
    let agent_dir = tmp.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent = AgentProcess::start(&a, &agent_dir, AGENT_ID);
    create_workload_entry(&b, "spiffe://example.org/before");
    agent.wait_for_x509_within(&["spiffe://example.org/before"], REACH);
    assert_eq!(sample(a.http, FEED_RESTARTS), Some(0.0));

    let admin = admin_url();
    block_on(postgres_query(
        &admin,
        &format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false"),
    ));
    let terminated = block_on(postgres_query(
        &admin,
        &format!(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
             WHERE application_name = 'zt-change-feed' AND datname = '{db}'"
        ),
    ));
    assert_eq!(terminated, ["true", "true"], "one listener per server");
    let body = wait_readyz(&a, 503);
    assert!(body.contains("change_feed"), "{body}");
    block_on(postgres_query(
        &admin,
        &format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true"),
    ));
    wait_readyz(&a, 200);
    wait_readyz(&b, 200);
    for server in [&a, &b] {
        assert_eq!(
            sample(server.http, FEED_RESTARTS),
            Some(1.0),
            "{}",
            server.stderr()
        );
    }
    assert!(
        a.stderr()
            .contains("background task lost its connection to PostgreSQL")
            || a.stderr().contains("background task failed"),
        "the outage is not logged:\n{}",
        a.stderr()
    );

    create_workload_entry(&b, "spiffe://example.org/after");
    agent.wait_for_x509_within(
        &["spiffe://example.org/after", "spiffe://example.org/before"],
        REACH,
    );
}

/// What every server must agree on after a rotation: no authority left half
/// rotated, one activation number each, the same bundle everywhere (once each
/// reports ready), and SVIDs minted through any of them chain to the newest
/// authority and verify against any server's bundle.
fn assert_one_rotation_outcome(url: &str, servers: &[&ServerProcess], dir: &Path) {
    let prepared = block_on(postgres_query(
        url,
        "SELECT COUNT(*)::text FROM authorities WHERE activated_at IS NULL",
    ));
    assert_eq!(prepared, ["0"], "an authority left prepared after a rotation");
    let activations = block_on(postgres_query(
        url,
        "SELECT (COUNT(DISTINCT activation) = COUNT(*))::text FROM authorities",
    ));
    assert_eq!(
        activations,
        ["true"],
        "two authorities with one activation number"
    );
    let newest = block_on(postgres_query(
        url,
        "SELECT ca_cert_pem FROM authorities ORDER BY activation DESC LIMIT 1",
    ));
    let newest = zt_identity::x509::certificates_from_pem(newest[0].as_bytes()).unwrap();
    let newest = bundle_of(&newest[0]);
    for server in servers {
        wait_readyz(server, 200);
    }
    let bundles: Vec<Bundle> = servers.iter().map(|s| bundle(s)).collect();
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(
            bundles[i].x509_authorities(),
            bundles[0].x509_authorities(),
            "server {i} serves another bundle than server 0"
        );
        let chain = mint(server, &dir.join(format!("minted-{i}")));
        assert!(
            verifies(&chain, &newest),
            "server {i} does not sign with the newest authority"
        );
        for (j, other) in bundles.iter().enumerate() {
            assert!(
                verifies(&chain, other),
                "an SVID of server {i} fails against server {j}'s bundle"
            );
        }
    }
}

/// Two servers asked to rotate at the same moment, several times: each round ends
/// with every authority activated once and one bundle (`zt ca rotate` through
/// both servers at once rotates once or twice, never half).
#[test]
fn replicas_racing_a_ca_rotation_agree() {
    let Some(url) = postgres_database("replicas_racing_a_ca_rotation_agree") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = ServerProcess::start(&tmp.path().join("a"), Some(&url));
    let b = ServerProcess::start(&tmp.path().join("b"), Some(&url));
    for round in 0..3 {
        let rotate = |server: &ServerProcess| {
            Command::new(env!("CARGO_BIN_EXE_zt"))
                .args(["ca", "rotate", "--socket"])
                .arg(server.socket())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (ra, rb) = (rotate(&a), rotate(&b));
        for out in [ra.wait_with_output().unwrap(), rb.wait_with_output().unwrap()] {
            assert!(out.status.success(), "round {round}: {}", describe(&out));
        }
        assert_one_rotation_outcome(&url, &[&a, &b], &tmp.path().join(format!("round-{round}")));
    }
}

/// Two servers reach the rotation schedule together (a short `--ca-ttl`): one
/// next authority is prepared, never one each, and it is the one activated.
#[test]
fn replicas_reaching_the_rotation_schedule_together_agree() {
    let Some(url) = postgres_database("replicas_reaching_the_rotation_schedule_together_agree") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut a = ServerProcess::spawn_with(&tmp.path().join("a"), Some(&url), &["--ca-ttl", "12s"]);
    let mut b = ServerProcess::spawn_with(&tmp.path().join("b"), Some(&url), &["--ca-ttl", "12s"]);
    a.wait_ready();
    b.wait_ready();
    let start = Instant::now();
    loop {
        let counts = block_on(postgres_query(
            &url,
            "SELECT COUNT(*)::text || ' ' || (COUNT(*) FILTER (WHERE activated_at IS NULL))::text \
             FROM authorities",
        ));
        let (total, prepared) = counts[0].split_once(' ').unwrap();
        let (total, prepared): (u32, u32) = (total.parse().unwrap(), prepared.parse().unwrap());
        assert!(
            total <= 2 && prepared <= 1,
            "{total} authorities, {prepared} prepared"
        );
        if total == 2 && prepared == 0 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no rotation within {DEADLINE:?}\n{}\n{}",
            a.stderr(),
            b.stderr()
        );
        thread::sleep(POLL * 5);
    }
    assert_one_rotation_outcome(&url, &[&a, &b], tmp.path());
}
