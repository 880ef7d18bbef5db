//! `zt pdp run`: a standalone policy decision point with OPA's REST API, where
//! the seed's `opa run --server policy/allow.rego` becomes
//! `zt pdp run policy/allow.rego`.

use std::process::ExitCode;

use zt_policy::rego::RegoPolicies;

use crate::PdpRunArgs;

/// Serves the policies and data files given until SIGINT or SIGTERM.
pub fn run(args: PdpRunArgs) -> anyhow::Result<ExitCode> {
    let (policies, revision) = load(&args.files, "")?;
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
    };
    runtime
        .block_on(zt_pdp::serve(listeners, policies, super::shutdown_signal()))
        .map_err(|(addr, e)| anyhow::anyhow!("{addr}: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Compiles Rego modules, data documents and bundles from files; the bundles'
/// revisions (`file@revision`, comma-separated) if any. Errors name `flag` and
/// the file.
pub fn load(files: &[std::path::PathBuf], flag: &str) -> anyhow::Result<(RegoPolicies, Option<String>)> {
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
    let policies = RegoPolicies::compile(loaded.modules, loaded.data, zt_policy::rego::DEFAULT_EVAL_LIMIT)
        .map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(|e| format!("{flag}{e}")).collect();
            anyhow::anyhow!("{}", lines.join("\n"))
        })?;
    Ok((policies, (!revisions.is_empty()).then(|| revisions.join(","))))
}
