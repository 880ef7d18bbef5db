//! `zt pdp run`: a standalone policy decision point with OPA's REST API, where
//! the seed's `opa run --server policy/allow.rego` becomes
//! `zt pdp run policy/allow.rego`.

use std::process::ExitCode;

use zt_policy::rego::RegoPolicies;

use crate::PdpRunArgs;

/// Serves the policies and data files given until SIGINT or SIGTERM.
pub fn run(args: PdpRunArgs) -> anyhow::Result<ExitCode> {
    let mut loaded = zt_pdp::data::Loaded::default();
    for file in &args.files {
        loaded.add_file(file).map_err(anyhow::Error::msg)?;
    }
    let loaded_revisions: Vec<String> = loaded
        .revisions
        .iter()
        .map(|(bundle, revision)| format!("{bundle}@{revision}"))
        .collect();
    let policies = RegoPolicies::compile(loaded.modules, loaded.data, zt_policy::rego::DEFAULT_EVAL_LIMIT)
        .map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("{}", lines.join("\n"))
        })?;
    super::init_logging("info");
    let runtime = super::runtime()?;
    let listeners = zt_pdp::Listeners {
        http: args.addr,
        ext_authz: args
            .ext_authz_addr
            .map(|addr| (addr, args.ext_authz_path.clone())),
        decision_log: match &args.decision_log {
            Some(path) => {
                let revision = (!loaded_revisions.is_empty()).then(|| loaded_revisions.join(","));
                let writer =
                    zt_audit::Writer::open(path).map_err(|e| anyhow::anyhow!("--decision-log {e}"))?;
                Some((writer, revision))
            }
            None => None,
        },
    };
    runtime
        .block_on(zt_pdp::serve(listeners, policies, super::shutdown_signal()))
        .map_err(|(addr, e)| anyhow::anyhow!("{addr}: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
