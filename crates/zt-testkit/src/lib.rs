//! Test support shared by zt's crates. Only ever a dev-dependency.
//!
//! A one-shot TLS server that reports who connected, for handshake tests.
//!
//! Interop tests need tools no one here wrote: a Python with `cryptography`
//! (from `ZT_TEST_PYTHON`, which the test script sets to its virtualenv) and the
//! `openssl` command. When one is missing the test says so loudly on stderr and
//! passes without checking anything — unless `ZT_REQUIRE_INTEROP=1` (set by the
//! test script and CI), where a missing tool fails the test instead.

#![forbid(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::{ServerConnection, StreamOwned};

/// Whether missing interop tools are a failure rather than a skip.
fn interop_required() -> bool {
    std::env::var("ZT_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// Reports a missing tool: a failure when interop is required, a loud skip otherwise.
/// Returns `None` so callers can `let Some(x) = … else { return Ok(()) }`.
fn missing<T>(test: &str, what: &str) -> Option<T> {
    assert!(
        !interop_required(),
        "{test}: {what} is required (ZT_REQUIRE_INTEROP=1) but missing"
    );
    eprintln!("SKIPPED {test}: {what} is missing; run the test script to install it");
    None
}

/// The Python interpreter of the test virtualenv (`ZT_TEST_PYTHON`).
pub fn python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("ZT_TEST_PYTHON") {
        Some(path) if PathBuf::from(&path).exists() => Some(PathBuf::from(path)),
        _ => missing(test, "ZT_TEST_PYTHON (a Python with cryptography)"),
    }
}

/// The `openssl` command, if installed.
pub fn openssl(test: &str) -> Option<PathBuf> {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        Some(PathBuf::from("openssl"))
    } else {
        missing(test, "the openssl command")
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
