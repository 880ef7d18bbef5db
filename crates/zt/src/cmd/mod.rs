//! One module per command group, with its clap arguments (those several share are
//! in `args`); each function returns the exit code or an error whose text names
//! the file, flag or value at fault.

pub mod agent;
pub mod analyze;
pub mod args;
pub mod audit;
pub mod bench;
pub mod ca;
pub mod client;
pub mod device;
pub mod entry;
pub mod gateway;
pub mod group;
pub mod id;
pub mod login;
pub mod pdp;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod session;
pub mod svid;
pub mod traffic;
pub mod up;
pub mod user;

use std::path::Path;

use anyhow::Context as _;
use zt_identity::Bundle;

use self::svid::BundleArgs;

/// Largest file any command reads, in bytes; SVIDs, keys and bundles are far smaller.
pub const MAX_INPUT_BYTES: u64 = 1 << 20;

/// Seconds since the Unix epoch.
pub use zt_identity::clock::unix_seconds as now;

/// Reads a whole input file, bounded; errors name the flag (if any) and the path.
pub fn read_input(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let name = format!("{flag} {}", path.display()).trim_start().to_owned();
    let file = std::fs::File::open(path).with_context(|| name.clone())?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| name.clone())?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        anyhow::bail!("{name}: larger than {MAX_INPUT_BYTES} bytes");
    }
    Ok(bytes)
}

/// Loads the bundle named by `--bundle`, if any.
pub fn load_bundle(args: &BundleArgs) -> anyhow::Result<Option<Bundle>> {
    let Some(path) = &args.bundle else {
        return Ok(None);
    };
    let bytes = read_input("--bundle", path)?;
    let bundle = Bundle::parse(&bytes, args.trust_domain.clone())
        .with_context(|| format!("--bundle {}", path.display()))?;
    Ok(Some(bundle))
}

/// Runs one admin API call on a small runtime of its own.
pub fn admin_call<T, E: Into<anyhow::Error>>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(call).map_err(Into::into)
}

/// RFC 3339 UTC, e.g. `2026-11-22T13:00:00Z`.
pub use zt_ca::rfc3339 as timestamp;

/// Logs to stderr, filtered by `RUST_LOG` or else `default_filter`.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The async runtime of a long-running command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Set by a supervisor (`zt up`) that holds this process's standard input.
pub use zt_up::children::EXIT_ON_STDIN_EOF;

/// Completes on SIGINT or SIGTERM, or when standard input closes if
/// [`EXIT_ON_STDIN_EOF`] is set.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let stdin_closed = async {
        if std::env::var_os(EXIT_ON_STDIN_EOF).is_some() {
            stdin_eof().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                () = stdin_closed => {}
            }
        }
        Err(_) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = stdin_closed => {}
            }
        }
    }
}

/// Completes when standard input reaches its end (or fails). The read runs on a
/// thread of its own, which a process may exit with: a blocking read cannot be
/// cancelled, and must not hold up the runtime's shutdown.
async fn stdin_eof() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-eof".into())
        .spawn(move || {
            use std::io::Read as _;
            let mut buf = [0_u8; 256];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Err(e) if e.kind() != std::io::ErrorKind::Interrupted => break,
                    _ => {}
                }
            }
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = rx.await;
        }
        // Without the watcher, signals still stop the process.
        Err(_) => std::future::pending::<()>().await,
    }
}
