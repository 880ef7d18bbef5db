//! `zt server`.

use std::process::ExitCode;

use zt_server::ServerConfig;

use crate::ServerArgs;

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
