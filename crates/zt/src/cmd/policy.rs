//! `zt policy`: policies as code — lint a directory, evaluate one request, run
//! table tests in CI.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use zt_policy::{PolicySet, Request};

use crate::{PolicyEvalArgs, PolicyLintArgs, PolicyTestArgs};

/// The policies of `dir`, or every problem, one per line.
fn load(dir: &Path, root_namespace: &str) -> anyhow::Result<PolicySet> {
    let policies = zt_policy::load_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(PolicySet::new(policies, root_namespace))
}

/// `zt policy lint DIR`: exit 0 and a summary, or 1 and every problem.
pub fn lint(args: PolicyLintArgs) -> anyhow::Result<ExitCode> {
    let set = load(&args.dir, &args.root_namespace)?;
    let mut namespaces = std::collections::BTreeMap::<&str, usize>::new();
    for policy in set.policies() {
        *namespaces.entry(policy.namespace.as_str()).or_default() += 1;
    }
    let by_namespace: Vec<String> = namespaces.iter().map(|(ns, n)| format!("{ns}: {n}")).collect();
    println!(
        "{}: {} policies, no problems ({})",
        args.dir.display(),
        set.policies().len(),
        by_namespace.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `zt policy eval --policies DIR --request JSON`: the decision as JSON.
pub fn eval(args: PolicyEvalArgs) -> anyhow::Result<ExitCode> {
    let set = load(&args.policies, &args.root_namespace)?;
    let text = match args.request.as_str() {
        "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), super::MAX_INPUT_BYTES),
                &mut text,
            )
            .context("--request -: reading standard input")?;
            text
        }
        inline => match inline.strip_prefix('@') {
            Some(path) => String::from_utf8(super::read_input("--request", Path::new(path))?)
                .with_context(|| format!("--request {inline}: not UTF-8"))?,
            None => inline.to_owned(),
        },
    };
    let request: Request = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--request: {e}"))?;
    println!("{}", serde_json::to_string(&set.evaluate(&request))?);
    Ok(ExitCode::SUCCESS)
}

/// `zt policy test DIR --cases FILE`: a line per case; exit 1 if any failed.
pub fn test(args: PolicyTestArgs) -> anyhow::Result<ExitCode> {
    let set = load(&args.dir, &args.root_namespace)?;
    let text = String::from_utf8(super::read_input("--cases", &args.cases)?)
        .with_context(|| format!("--cases {}: not UTF-8", args.cases.display()))?;
    let cases = zt_policy::cases::parse(&text)
        .map_err(|e| anyhow::anyhow!("--cases {}: {e}", args.cases.display()))?;
    let outcomes = zt_policy::cases::run(&set, &cases);
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    for outcome in &outcomes {
        match &outcome.failure {
            None => println!("PASS  {}", outcome.name),
            Some(why) => println!("FAIL  {}: {why}", outcome.name),
        }
    }
    println!(
        "{} cases: {} passed, {failed} failed",
        outcomes.len(),
        outcomes.len() - failed
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
