//! `zt server`.

use std::process::ExitCode;

use zt_server::ServerConfig;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use zt_ca::KeyType;
use zt_identity::TrustDomain;

use super::args::{DEFAULT_DATA_DIR, RegoLimitArgs};
use crate::duration;

#[derive(Args)]
pub(crate) struct ServerArgs {
    /// Trust domain this server is the authority of.
    #[arg(long, value_parser = TrustDomain::parse)]
    pub(crate) trust_domain: TrustDomain,
    /// Data directory: admin socket, lock and (by default) the SQLite datastore.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
    /// Datastore: a postgres:// URL for several servers on one database (default: SQLite in the data dir).
    #[arg(long)]
    pub(crate) datastore: Option<String>,
    /// Health (/healthz, /readyz) and metrics (/metrics) address.
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub(crate) http: std::net::SocketAddr,
    /// Lifetime of each signing authority; the next is prepared at 1/2 and activated at 5/6 of it.
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    pub(crate) ca_ttl: Duration,
    /// Key algorithm of signing authorities: ec-p256, ec-p384 or rsa-2048.
    #[arg(long, default_value = "ec-p256")]
    pub(crate) ca_key_type: KeyType,
    /// Agent API (gRPC over TLS 1.3) address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub(crate) agent_api: std::net::SocketAddr,
    /// Lifetime of agent SVIDs.
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    pub(crate) agent_ttl: Duration,
    /// Serve a policy decision point (OPA's REST API) on the --http port, with these
    /// Rego policies, data files and bundles (repeatable). Policies PUT through the API
    /// live in this server's memory only.
    #[arg(long = "pdp")]
    pub(crate) pdp: Vec<PathBuf>,
    /// With --pdp: serve PUT and DELETE /v1/policies/{id}, as `zt pdp run
    /// --allow-policy-writes` does. Without it they are refused (401).
    #[arg(long, requires = "pdp")]
    pub(crate) allow_policy_writes: bool,
    /// With --pdp: require `Authorization: Bearer TOKEN` on every PDP API call but
    /// /health, the token read once from this file (chmod 600), as `zt pdp run` does.
    #[arg(long, requires = "pdp")]
    pub(crate) api_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) rego_limits: RegoLimitArgs,
}

/// Runs the control plane until SIGINT or SIGTERM.
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    super::init_logging("info,sqlx=warn");
    let config = ServerConfig {
        data_dir: args.data_dir,
        datastore: args.datastore,
        trust_domain: args.trust_domain,
        http_addr: args.http,
        ca_ttl: args.ca_ttl,
        ca_key_type: args.ca_key_type,
        agent_addr: args.agent_api,
        agent_ttl: args.agent_ttl,
        pdp: if args.pdp.is_empty() {
            None
        } else {
            let access = super::pdp::access(args.allow_policy_writes, args.api_token_file.as_deref())?;
            let (policies, _) = super::pdp::load(&args.pdp, "--pdp", args.rego_limits)?;
            Some(zt_pdp::Pdp::new(policies).with_access(access))
        },
    };
    super::runtime()?.block_on(zt_server::run(config, super::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}
