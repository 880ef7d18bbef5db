//! `zt pdp run`: a standalone policy decision point with OPA's REST API, where
//! the seed's `opa run --server policy/allow.rego` becomes
//! `zt pdp run policy/allow.rego`.

use std::process::ExitCode;

use zt_policy::rego::RegoPolicies;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::args::{CheckpointArgs, RegoLimitArgs};

#[derive(Subcommand)]
pub(crate) enum PdpCommand {
    /// Serve Rego policies (.rego, v1 or v0) and data documents (.json, .yaml) with
    /// OPA's REST API: `opa run --server FILES` becomes `zt pdp run FILES`.
    Run(PdpRunArgs),
}

#[derive(Args)]
pub(crate) struct PdpRunArgs {
    /// Where to listen (OPA's default port).
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub(crate) addr: std::net::SocketAddr,
    /// Also serve Envoy's ext_authz (gRPC, envoy.service.auth.v3.Authorization) here,
    /// e.g. 127.0.0.1:9191 as OPA-Envoy does.
    #[arg(long)]
    pub(crate) ext_authz_addr: Option<std::net::SocketAddr>,
    /// The rule ext_authz decisions come from (OPA-Envoy's default).
    #[arg(long, default_value = zt_pdp::ext_authz::DEFAULT_PATH)]
    pub(crate) ext_authz_path: String,
    /// Append every /v1/data decision (id, query, input masked by data.system.log.mask,
    /// result, bundle revisions, time) to this hash-chained log (zt audit verify|query).
    #[arg(long)]
    pub(crate) decision_log: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) checkpoints: CheckpointArgs,
    /// Serve PUT and DELETE /v1/policies/{id}: whoever may call the API can then change
    /// what it decides. Without it they are refused (401).
    #[arg(long)]
    pub(crate) allow_policy_writes: bool,
    /// Require `Authorization: Bearer TOKEN` on every API call but /health (OPA's
    /// --authentication=token); the token is the file's first line, read once at start.
    /// The file must not be readable by other users (chmod 600).
    #[arg(long)]
    pub(crate) api_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) rego_limits: RegoLimitArgs,
    /// Policy and data files.
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
}

/// Serves the policies and data files given until SIGINT or SIGTERM.
pub fn run(args: PdpRunArgs) -> anyhow::Result<ExitCode> {
    let access = access(args.allow_policy_writes, args.api_token_file.as_deref())?;
    let (policies, revision) = load(&args.files, "", args.rego_limits)?;
    super::init_logging("info");
    let runtime = super::runtime()?;
    let listeners = zt_pdp::Listeners {
        http: args.addr,
        ext_authz: args
            .ext_authz_addr
            .map(|addr| (addr, args.ext_authz_path.clone())),
        decision_log: match &args.decision_log {
            Some(path) => Some((super::audit::open_log(path, &args.checkpoints)?, revision.clone())),
            None => None,
        },
        access,
    };
    runtime
        .block_on(zt_pdp::serve(listeners, policies, super::shutdown_signal()))
        .map_err(|(addr, e)| anyhow::anyhow!("{addr}: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// What the PDP API lets callers do: policy writes if enabled, and the token
/// of `--api-token-file` if given (errors name the flag and the file).
pub fn access(
    allow_policy_writes: bool,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<zt_pdp::access::Access> {
    let token = match token_file {
        Some(path) => {
            Some(zt_pdp::access::ApiToken::read(path).map_err(|e| anyhow::anyhow!("--api-token-file {e}"))?)
        }
        None => None,
    };
    Ok(zt_pdp::access::Access {
        policy_writes: allow_policy_writes,
        token,
    })
}

/// Sets the process-wide memory limit of Rego (`--rego-max-memory`) and
/// returns the time limit of each query (`--rego-timeout`).
pub fn limit(limits: RegoLimitArgs) -> std::time::Duration {
    zt_policy::rego::set_memory_limit(limits.rego_max_memory);
    limits.rego_timeout
}

/// Compiles Rego modules, data documents and bundles from files under
/// `limits`; the bundles' revisions (`file@revision`, comma-separated) if any.
/// Errors name `flag` and the file.
pub fn load(
    files: &[std::path::PathBuf],
    flag: &str,
    limits: RegoLimitArgs,
) -> anyhow::Result<(RegoPolicies, Option<String>)> {
    let timeout = limit(limits);
    let flag = if flag.is_empty() {
        String::new()
    } else {
        format!("{flag} ")
    };
    let mut loaded = zt_pdp::data::Loaded::default();
    for file in files {
        loaded.add_file(file).map_err(|e| anyhow::anyhow!("{flag}{e}"))?;
    }
    let revisions: Vec<String> = loaded
        .revisions
        .iter()
        .map(|(bundle, revision)| format!("{bundle}@{revision}"))
        .collect();
    let policies = RegoPolicies::compile(loaded.modules, loaded.data, timeout).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("{flag}{e}")).collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })?;
    Ok((policies, (!revisions.is_empty()).then(|| revisions.join(","))))
}
