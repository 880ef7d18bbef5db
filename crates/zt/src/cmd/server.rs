//! `zt server`.

use std::process::ExitCode;

use anyhow::Context as _;
use zt_server::ServerConfig;

use crate::ServerArgs;

/// Runs the control plane until SIGINT or SIGTERM.
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = ServerConfig {
        data_dir: args.data_dir,
        datastore: args.datastore,
        trust_domain: args.trust_domain,
        http_addr: args.http,
        ca_ttl: args.ca_ttl,
        ca_key_type: args.ca_key_type,
        agent_addr: args.agent_api,
        agent_ttl: args.agent_ttl,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(zt_server::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
