//! `zt gateway`: the access gateway people reach mesh services through.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

#[derive(Args)]
pub(crate) struct GatewayArgs {
    /// The configuration file (YAML): listener, certificate, OpenID Provider,
    /// session key, the gateway's SVID, policies and routes.
    #[arg(long)]
    pub(crate) config: PathBuf,
}

/// `zt gateway`.
pub fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let config = zt_gateway::GatewayConfig::load(&args.config)?;
    super::init_logging("info");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(zt_gateway::run(config, super::shutdown_signal()))
        .with_context(|| format!("--config {}", args.config.display()))?;
    Ok(ExitCode::SUCCESS)
}
