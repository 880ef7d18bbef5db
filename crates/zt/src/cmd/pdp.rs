//! `zt pdp run`: a standalone policy decision point with OPA's REST API, where
//! the seed's `opa run --server policy/allow.rego` becomes
//! `zt pdp run policy/allow.rego`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use zt_policy::rego::RegoPolicies;

use crate::PdpRunArgs;

/// Serves the policies and data files given until SIGINT or SIGTERM.
pub fn run(args: PdpRunArgs) -> anyhow::Result<ExitCode> {
    let mut modules = BTreeMap::new();
    let mut data = serde_json::Value::Object(Default::default());
    for file in &args.files {
        let bytes = super::read_input("", file)?;
        let name = file.display().to_string();
        let text = String::from_utf8(bytes).with_context(|| format!("{name}: not UTF-8"))?;
        match file.extension().and_then(|e| e.to_str()) {
            Some("rego") => {
                modules.insert(name, text);
            }
            Some("json") => {
                let value: serde_json::Value =
                    serde_json::from_str(&text).with_context(|| format!("{name}: not JSON"))?;
                merge(&mut data, value).with_context(|| name.clone())?;
            }
            Some("yaml" | "yml") => {
                let value: serde_json::Value =
                    serde_yaml_ng::from_str(&text).with_context(|| format!("{name}: not YAML"))?;
                merge(&mut data, value).with_context(|| name.clone())?;
            }
            _ => anyhow::bail!("{name}: expected a .rego policy or a .json/.yaml data file"),
        }
    }
    let policies =
        RegoPolicies::compile(modules, data, zt_policy::rego::DEFAULT_EVAL_LIMIT).map_err(|errors| {
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
    };
    runtime
        .block_on(zt_pdp::serve(listeners, policies, super::shutdown_signal()))
        .map_err(|(addr, e)| anyhow::anyhow!("{addr}: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Merges a data document into `data` at the root; a key both define as
/// objects is merged, any other overlap is a conflict.
fn merge(data: &mut serde_json::Value, value: serde_json::Value) -> anyhow::Result<()> {
    let (serde_json::Value::Object(into), serde_json::Value::Object(from)) = (data, value) else {
        anyhow::bail!("a data file must hold a JSON object at its root");
    };
    for (key, value) in from {
        match into.get_mut(&key) {
            None => {
                into.insert(key, value);
            }
            Some(existing) if existing.is_object() && value.is_object() => {
                merge(existing, value).with_context(|| key.clone())?;
            }
            Some(_) => anyhow::bail!("{key}: defined twice"),
        }
    }
    Ok(())
}
