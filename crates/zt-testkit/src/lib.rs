//! Test support shared by zt's crates. Only ever a dev-dependency.
//!
//! Interop tests need tools no one here wrote: a Python with `cryptography`
//! (from `ZT_TEST_PYTHON`, which the test script sets to its virtualenv) and the
//! `openssl` command. When one is missing the test says so loudly on stderr and
//! passes without checking anything — unless `ZT_REQUIRE_INTEROP=1` (set by the
//! test script and CI), where a missing tool fails the test instead.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

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
