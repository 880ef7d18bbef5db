//! PostgreSQL restarted under a running `zt server`: the server recovers without a
//! restart of its own. In a test binary of its own, because it restarts the shared
//! PostgreSQL cluster; it runs only when `ZT_TEST_POSTGRES_RESTART=1` (CI sets it)
//! and says so loudly otherwise.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::process::Command;
use std::thread;
use std::time::Instant;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_recovers_from_a_postgres_restart() {
    if std::env::var("ZT_TEST_POSTGRES_RESTART").as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED server_recovers_from_a_postgres_restart: set ZT_TEST_POSTGRES_RESTART=1 to let it restart PostgreSQL"
        );
        return;
    }
    let Some(url) = zt_testkit::postgres_database("server_recovers_from_a_postgres_restart").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), Some(&url));
    let create = |name: &str| {
        zt(
            &server,
            &[
                "entry",
                "create",
                "--spiffe-id",
                &format!("spiffe://example.org/{name}"),
                "--parent-id",
                "spiffe://example.org/node",
                "--selector",
                "unix:uid:1",
            ],
        )
    };
    assert!(create("before").status.success());

    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let restart = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            version.to_str().unwrap(),
            "main",
            "restart",
        ])
        .output()
        .unwrap();
    assert!(restart.status.success(), "{}", zt_testkit::describe(&restart));
    let restarted = Instant::now();

    // The first calls may meet connections the restart closed; within the deadline
    // a write succeeds again, through the same server process.
    loop {
        if create("after").status.success() {
            break;
        }
        assert!(
            restarted.elapsed() < DEADLINE,
            "server did not recover:\n{}",
            server.stderr()
        );
        thread::sleep(POLL * 5);
    }
    eprintln!(
        "server wrote again {:?} after PostgreSQL restarted",
        restarted.elapsed()
    );
    assert_eq!(count(&server), 2);
    let (status, _) = http_get(server.http, "/readyz").unwrap();
    assert_eq!(status, 200);
}
